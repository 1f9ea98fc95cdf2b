"""The single reader of every checkpoint format (`formats.LOADABLE_FORMATS`) into a numpy tree.

No reader runs code from a file: npz without pickles, torch files with
`weights_only=True`, TorchScript and msgpack through restricted decoders.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
import orbax.checkpoint as ocp

from vivit_knn.weights import big_vision, clip, formats, npz, scenic, timm, videomae, vit_npz
from vivit_knn.weights.state_dict import read_state_dict
from vivit_knn.weights.tree import CheckpointFormatError, first_line


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


def _read_orbax(path: str) -> Dict[str, Any]:
  if not os.path.isdir(path):
    raise CheckpointFormatError("an Orbax checkpoint is a directory, this is a file")
  try:
    return load_orbax(path)
  except (ValueError, OSError) as err:
    raise CheckpointFormatError(f"Orbax cannot restore it ({first_line(err, 160)})") from None


# `(path, num_heads) -> tree`; only state dicts ('timm', 'clip', 'videomae') use num_heads.
_READERS: Dict[str, Callable[[str, Optional[int]], Dict[str, Any]]] = {
    "orbax": lambda path, _: _read_orbax(path),
    "vit_npz": lambda path, _: vit_npz.convert_vit_npz(npz.load_npz(path)),
    "big_vision_npz": lambda path, _: big_vision.convert_big_vision(npz.load_npz(path)),
    "timm": lambda path, heads: timm.convert_timm(read_state_dict(path, "a timm checkpoint"),
                                                  heads),
    "scenic": lambda path, _: scenic.load_scenic(path),
    "clip": lambda path, heads: clip.convert_clip(clip.load_clip_state_dict(path), heads),
    "videomae": lambda path, heads: videomae.convert_videomae(
        videomae.load_videomae_state_dict(path), heads),
}


def load_checkpoint(path: str, checkpoint_format: str, num_heads: Optional[int] = None,
                    field: str = "init_from") -> Dict[str, Any]:
  """Reads `path` (file or directory) in `checkpoint_format` as a tree in our naming (numpy).

  'orbax' gives the tree as stored; 'vit_npz', 'big_vision_npz' and 'timm' an
  image ViT tree; 'scenic' the params as they are; 'clip' and 'videomae' the
  `CLIPVisionExpert` / `VideoMAEExpert` trees. `num_heads` is for state dicts,
  which do not record it (default: from the width). Errors name
  `<field>.checkpoint_path` / `.checkpoint_format`, or a flag `field` ('--from')
  as it is with `--format`; keys that do not fit raise `UnmatchedKeysError`.
  """
  path_label, format_label = (
      (field, "--format") if field.startswith("--")
      else (f"{field}.checkpoint_path", f"{field}.checkpoint_format"))
  if checkpoint_format not in formats.LOADABLE_FORMATS:
    raise ValueError(f"{format_label} must be one of {formats.LOADABLE_FORMATS}, "
                     f"got {checkpoint_format!r}")
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"{path_label}={path} does not exist")
  try:
    return _READERS[checkpoint_format](path, num_heads)
  except CheckpointFormatError as err:
    raise CheckpointFormatError(f"{path_label}={path} cannot be read as {checkpoint_format!r}: "
                                f"{err}") from None
