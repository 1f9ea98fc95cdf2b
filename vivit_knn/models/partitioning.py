"""Logical sharding names for activations: `constrain(x, ("batch", "length", "embed"))`.

Under `jax.set_mesh` (the trainer's steps) this pins the layout with
`with_sharding_constraint` by `ACTIVATION_RULES`; outside a mesh it does nothing.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
from jax.sharding import PartitionSpec as P

ACTIVATION_RULES = {
    "batch": ("data", "fsdp"),
    "length": None,
    "time": None,
    "space": None,
    "embed": None,
    "heads": "tensor",
    "mlp": "tensor",
}


def activation_spec(shape: Sequence[int], names: Sequence[Optional[str]], mesh) -> P:
  """PartitionSpec from logical names, dropping mesh axes that are absent or do not divide."""
  spec = []
  for dim, name in zip(shape, names):
    axes = ACTIVATION_RULES.get(name) if name else None
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else (axes or ()))
                 if a in mesh.axis_names)
    size = math.prod(mesh.shape[a] for a in axes)
    spec.append(axes if axes and size > 1 and dim % size == 0 else None)
  return P(*spec)


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
  """Constrains `x`'s layout by logical axis names when a mesh is set; else returns `x`."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or len(names) != x.ndim:
    return x
  if any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
    return x  # explicit-sharding meshes carry layouts in the types instead

  return jax.lax.with_sharding_constraint(x, activation_spec(x.shape, names, mesh))
