"""Reads a checkpoint of any `init_from.checkpoint_format` into a parameter tree (numpy)."""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

import numpy as np
import orbax.checkpoint as ocp

from vivit_knn.weights import big_vision, formats, timm, vit_npz


def save_orbax(path: str, tree: Mapping[str, Any]) -> str:
  """Writes `tree` as an Orbax (StandardCheckpointer) checkpoint at `path`; returns it."""
  path = os.path.abspath(path)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, dict(tree))
  checkpointer.wait_until_finished()
  checkpointer.close()
  return path


def load_orbax(path: str) -> Dict[str, Any]:
  """Restores an Orbax checkpoint as numpy arrays.

  Accepts a bare parameter tree (what `vivit_knn.weights.convert` writes) or a
  train state holding one under `params` (a trainer checkpoint's
  `<workdir>/checkpoints/<step>/default`).
  """
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.restore(os.path.abspath(path))
  checkpointer.close()
  if isinstance(tree, Mapping) and isinstance(tree.get("params"), Mapping):
    tree = tree["params"]
  return _to_numpy(tree)


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def load_checkpoint(path: str, checkpoint_format: str,
                    num_heads: Optional[int] = None) -> Dict[str, Any]:
  """Reads `path` in `checkpoint_format` and returns a tree in our naming.

  `num_heads` is only needed for 'timm' (state dicts do not record it).
  """
  if checkpoint_format not in formats.CHECKPOINT_FORMATS:
    raise ValueError(f"checkpoint_format must be one of {formats.CHECKPOINT_FORMATS}, "
                     f"got {checkpoint_format!r}")
  if not os.path.exists(path):
    raise FileNotFoundError(f"init_from.checkpoint_path={path} does not exist")
  if checkpoint_format == "orbax":
    return load_orbax(path)
  if checkpoint_format == "vit_npz":
    return vit_npz.convert_vit_npz(vit_npz.load_npz(path))
  if checkpoint_format == "big_vision_npz":
    return big_vision.convert_big_vision(big_vision.load_npz(path))
  return timm.convert_timm(timm.load_torch_state_dict(path), num_heads)
