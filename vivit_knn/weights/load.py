"""The single reader of every checkpoint format (`formats.LOADABLE_FORMATS`) into a numpy tree.

`load_checkpoint` serves `init_from` (the model formats), CAST's experts ('clip',
'videomae', 'orbax') and the `convert` CLI. No reader runs code from a file:
npz without pickles, torch files with `weights_only=True`, TorchScript and
msgpack through restricted decoders.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import orbax.checkpoint as ocp

from vivit_knn.weights import big_vision, clip, formats, npz, scenic, timm, videomae, vit_npz
from vivit_knn.weights.tree import CheckpointFormatError


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


def _read_orbax(path: str, num_heads: Optional[int]) -> Dict[str, Any]:
  del num_heads
  if not os.path.isdir(path):
    raise CheckpointFormatError("an Orbax checkpoint is a directory, this is a file")
  try:
    return load_orbax(path)
  except (ValueError, OSError) as err:
    reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
    raise CheckpointFormatError(f"Orbax cannot restore it ({reason})") from None


def _read_vit_npz(path: str, num_heads: Optional[int]) -> Dict[str, Any]:
  del num_heads
  return vit_npz.convert_vit_npz(npz.load_npz(path))


def _read_big_vision(path: str, num_heads: Optional[int]) -> Dict[str, Any]:
  del num_heads
  return big_vision.convert_big_vision(npz.load_npz(path))


def _read_timm(path: str, num_heads: Optional[int]) -> Dict[str, Any]:
  return timm.convert_timm(timm.load_torch_state_dict(path), num_heads)


def _read_scenic(path: str, num_heads: Optional[int]) -> Dict[str, Any]:
  del num_heads
  return scenic.load_scenic(path)


def _read_clip(path: str, num_heads: Optional[int]) -> Dict[str, Any]:
  return clip.convert_clip(clip.load_clip_state_dict(path), num_heads)


def _read_videomae(path: str, num_heads: Optional[int]) -> Dict[str, Any]:
  return videomae.convert_videomae(videomae.load_videomae_state_dict(path), num_heads)


_READERS: Dict[str, Callable[[str, Optional[int]], Dict[str, Any]]] = {
    "orbax": _read_orbax, "vit_npz": _read_vit_npz, "big_vision_npz": _read_big_vision,
    "timm": _read_timm, "scenic": _read_scenic, "clip": _read_clip, "videomae": _read_videomae,
}


def load_checkpoint(path: str, checkpoint_format: str, num_heads: Optional[int] = None,
                    field: str = "init_from") -> Dict[str, Any]:
  """Reads `path` in `checkpoint_format` and returns a tree in our naming (numpy arrays).

  Formats (`formats.LOADABLE_FORMATS`):
    'orbax': a tree in our naming (`vivit_knn.weights.convert`'s output, or a
      trainer checkpoint's `params`);
    'vit_npz', 'big_vision_npz', 'timm': an image ViT (our image tree);
    'scenic': a scenic / flax checkpoint file or workdir (its params as they are);
    'clip': the `CLIPVisionExpert` tree; 'videomae': the `VideoMAEExpert` tree.

  Args:
    path: the checkpoint file or directory.
    checkpoint_format: one of `formats.LOADABLE_FORMATS`.
    num_heads: the head count for state dicts, which do not record it ('timm',
      'clip', 'videomae'; by default read from the width).
    field: the config field the path and format come from, for error messages
      (e.g. 'init_from.spatial_expert': `<field>.checkpoint_path=...`); a flag
      name such as '--from' is used as it is (the format then is `--format`).

  Raises:
    ValueError: an unknown format (naming `<field>.checkpoint_format`).
    FileNotFoundError: `path` does not exist.
    CheckpointFormatError: the file is not in that format (one line naming
      `<field>.checkpoint_path`, the path and the format).
    UnmatchedKeysError: the checkpoint's keys do not fit the target tree.
  """
  path_label, format_label = _labels(field)
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


def _labels(field: str) -> Tuple[str, str]:
  """How errors name the path and the format: config fields, or the CLI's flags."""
  if field.startswith("--"):
    return field, "--format"
  return f"{field}.checkpoint_path", f"{field}.checkpoint_format"
