"""Device mesh `(data, fsdp)` and the shardings of params and batches on it.

The batch is split over both axes (FSDP is data parallel too). A parameter is
sharded over `fsdp` along its largest dimension that divides evenly, once it has
at least `fsdp_min_param_size` elements; smaller ones are replicated.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def make_mesh(cfg: ml_collections.ConfigDict, devices: Optional[list] = None) -> Mesh:
  """Builds the `(data, fsdp)` mesh from `config.mesh`; `data=-1` takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  fsdp = cfg.fsdp
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the {n} devices")
  data = n // fsdp if cfg.data == -1 else cfg.data
  if data * fsdp != n:
    raise ValueError(f"mesh.data x mesh.fsdp = {data} x {fsdp} must equal the {n} devices "
                     "(use mesh.data=-1 to fill)")
  return Mesh(np.asarray(devices).reshape(data, fsdp), MESH_AXES)


def param_spec(shape, fsdp_size: int, min_size: int) -> P:
  """PartitionSpec for one parameter: its largest evenly divisible dim over `fsdp`, else replicated."""
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(tree: Any, mesh: Mesh, min_size: int) -> Any:
  """NamedShardings for every array leaf of `tree` (params, optimizer state) by `param_spec`."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, param_spec(np.shape(x), fsdp, min_size)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: leading axis split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding (scalars, rngs)."""
  return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Turns this host's numpy slice of a global batch into global jax Arrays on the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
