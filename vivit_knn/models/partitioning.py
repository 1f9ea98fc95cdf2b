"""The one logical -> mesh axis table, for parameters and activations alike.

Parameters get logical axis names from their paths (`train/sharding.py`), activations from
the modules: `constrain(x, ("batch", "length", "embed"))`. Both are mapped to mesh axes by
the same rules: `config.mesh.rules`, else `DEFAULT_RULES`. The steps bind the run's rules with
flax's `nn.logical_axis_rules` while they trace, under `jax.set_mesh`; outside a mesh
`constrain` does nothing. `batch` always maps to the data-parallel axes (`BATCH_AXES`), as the
batches are laid out; a mesh axis that an earlier dimension claims is not used again.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# FSDP over the embedding dimension, Megatron-style tensor parallelism over heads and the
# MLP hidden dimension. Names not listed (length, time, space, kv, ...) stay replicated.
DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("vocab", None),
)


def rules_table(rules: Optional[Sequence] = None) -> Dict[str, Any]:
  """`{logical name: mesh axis or axes or None}` from `(name, axis)` pairs (default rules).

  Raises ValueError naming `mesh.rules` for a malformed pair or an unknown mesh axis.
  """
  table = {}
  for pair in rules or DEFAULT_RULES:
    if len(pair) != 2:
      raise ValueError(f"mesh.rules entries must be (logical_name, mesh_axis), got {pair!r}")
    name, axis = pair
    for a in _axes(axis):
      if a not in MESH_AXES:
        raise ValueError(f"mesh.rules maps {name!r} to unknown mesh axis {a!r}; "
                         f"mesh axes are {MESH_AXES}")
    table[name] = axis
  return table


def _axes(axis: Any) -> tuple:
  return () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)


def activation_spec(shape: Sequence[int], names: Sequence[Optional[str]], mesh,
                    rules: Optional[Sequence] = None) -> P:
  """PartitionSpec from logical names by `rules` (default: the bound ones, else the defaults).

  Mesh axes that are absent, already claimed by an earlier dimension, or that do not divide
  the dimension are dropped.
  """
  table = rules_table(rules if rules is not None else nn.get_logical_axis_rules())
  spec, claimed = [], set()
  for dim, name in zip(shape, names):
    axes = BATCH_AXES if name == "batch" else _axes(table.get(name)) if name else ()
    axes = tuple(a for a in axes if a in mesh.axis_names and a not in claimed)
    claimed.update(axes)
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
