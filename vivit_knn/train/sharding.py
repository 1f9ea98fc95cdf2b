"""Device mesh `(data, fsdp, tensor)` and rule-based shardings of params and batches.

Every parameter gets logical axis names from its path and shape (`logical_axes`);
`config.mesh.rules` maps them to mesh axes through the one table of
`models/partitioning.py`, which also lays out the activations the modules name (`layout`).
A dimension stays replicated unless it divides evenly, and tensors under
`fsdp_min_param_size` elements are not FSDP-sharded.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vivit_knn.models import registry as model_registry
from vivit_knn.models.partitioning import BATCH_AXES, MESH_AXES, rules_table
from vivit_knn.weights.tree import key_name

# (path regex, logical axes by rank). First match wins; paths are '/'-joined. The rules
# of the attention and MLP layers and of each model family (`registry.param_axes`).
_PARAM_AXES = model_registry.param_axes()


def make_mesh(cfg: ml_collections.ConfigDict, devices: Optional[Sequence] = None) -> Mesh:
  """Builds the `(data, fsdp, tensor)` mesh from `config.mesh`; `data=-1` fills the rest."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  fsdp, tensor = cfg.fsdp, cfg.get("tensor", 1)
  if fsdp < 1 or tensor < 1 or n % (fsdp * tensor):
    raise ValueError(f"mesh.fsdp={fsdp} x mesh.tensor={tensor} must be >= 1 and divide the "
                     f"{n} devices")
  data = n // (fsdp * tensor) if cfg.data == -1 else cfg.data
  if data * fsdp * tensor != n:
    raise ValueError(f"mesh.data x mesh.fsdp x mesh.tensor = {data} x {fsdp} x {tensor} must "
                     f"equal the {n} devices (use mesh.data=-1 to fill)")
  return Mesh(np.asarray(devices).reshape(data, fsdp, tensor), MESH_AXES)


def logical_axes(path: str, ndim: int) -> Tuple[Optional[str], ...]:
  """Logical axis names of a parameter (or optimizer slot) at `path` with rank `ndim`.

  Attention and MLP weights get named axes; any other parameter names its
  largest dimension `embed` (FSDP candidate) and leaves the rest unnamed.
  """
  for pattern, axes in _PARAM_AXES:
    if re.search(pattern, path) and len(axes) == ndim:
      return axes
  return (None,) * ndim


def param_spec(path: str, shape: Sequence[int], mesh: Mesh, rules: Dict[str, Any],
               min_size: int) -> P:
  """PartitionSpec for one array from its logical axes, the rules and divisibility."""
  axes = list(logical_axes(path, len(shape)))
  big = int(np.prod(shape, dtype=np.int64)) >= min_size
  if big and "embed" not in axes and shape:
    # Unnamed tensors (embeddings, conv kernels, norms) are FSDP-sharded on their largest dim.
    for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
      if axes[dim] is None and shape[dim] % mesh.shape["fsdp"] == 0:
        axes[dim] = "embed"
        break
  spec = []
  for dim, name in zip(shape, axes):
    target = rules.get(name) if name else None
    if target == "fsdp" and not big:
      target = None
    if target is not None:
      size = int(np.prod([mesh.shape[a] for a in np.atleast_1d(target)]))
      if size == 1 or dim % size:
        target = None
    spec.append(target)
  return P(*spec)


def mesh_rules(cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The logical -> mesh axis table from `config.mesh.rules` (pairs), or the defaults."""
  return rules_table(cfg.get("rules"))


@contextlib.contextmanager
def layout(mesh: Mesh, cfg: ml_collections.ConfigDict):
  """Traces under `mesh` with `config.mesh.rules` bound, so activations follow the same table."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(mesh_rules(cfg).items())):
    yield


def tree_shardings(tree: Any, mesh: Mesh, cfg: ml_collections.ConfigDict) -> Any:
  """NamedShardings for every array leaf of `tree` (params or optimizer state)."""
  rules, min_size = mesh_rules(cfg), cfg.fsdp_min_param_size
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(
          mesh, param_spec(key_name(path), np.shape(leaf), mesh, rules, min_size)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: leading axis split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding (scalars, rngs)."""
  return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Turns this host's numpy slice of a global batch into global jax Arrays on the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def data_parallel_size(mesh: Mesh) -> int:
  """Number of batch shards (the product of the data-parallel mesh axes)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
