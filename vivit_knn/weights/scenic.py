"""scenic (and other flax) training checkpoints -> their parameter tree.

scenic saves its `TrainState` with `flax.training.checkpoints.save_checkpoint`:
a msgpack file `<workdir>/checkpoint_<step>`, or with recent flax an Orbax
directory of that name. The params are under `optimizer/target` (older scenic,
e.g. the released ViViT Kinetics checkpoints) or `params` (newer, optax); a bare
tree (top-level `embedding`) is accepted too. scenic's names are ours, so the
tree is returned as it is (numpy; bfloat16 / float16 widened to float32).
`flax.serialization.msgpack_restore` builds only dicts, numbers and arrays:
nothing from the file is executed.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping

import numpy as np

from vivit_knn.weights.tree import CheckpointFormatError, first_line

_STEP_FILE = re.compile(r"^checkpoint_(\d+)$")
_BARE = "checkpoint"
_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")


def find_checkpoint(path: str) -> str:
  """The checkpoint `path` names: itself, or in a directory the newest `checkpoint_<N>`.

  Without any `checkpoint_<N>` (file or Orbax directory): a file named
  `checkpoint`, or the directory itself when it is an Orbax checkpoint.
  """
  if not os.path.isdir(path):
    return path
  names = os.listdir(path)
  steps = [(int(m.group(1)), name) for name in names for m in [_STEP_FILE.match(name)] if m]
  if steps:
    return os.path.join(path, max(steps)[1])
  if _BARE in names and os.path.isfile(os.path.join(path, _BARE)):
    return os.path.join(path, _BARE)
  if _is_orbax_dir(path):
    return path
  raise CheckpointFormatError("a directory without checkpoint_<step> or checkpoint files")


def _is_orbax_dir(path: str) -> bool:
  return os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, marker)) for marker in _ORBAX_MARKERS)


def _restore_msgpack(path: str) -> Any:
  import msgpack  # pylint: disable=import-outside-toplevel
  from flax import serialization  # pylint: disable=import-outside-toplevel
  with open(path, "rb") as f:
    data = f.read()
  try:
    return serialization.msgpack_restore(data)
  except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as err:
    raise CheckpointFormatError(f"not a flax msgpack checkpoint ({first_line(err)})") from None


def _restore_orbax(path: str) -> Any:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    return checkpointer.restore(os.path.abspath(path))
  except (ValueError, OSError) as err:
    raise CheckpointFormatError(f"not a readable Orbax checkpoint ({first_line(err)})") from None
  finally:
    checkpointer.close()


def _numpy(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {str(k): _numpy(v) for k, v in tree.items()}
  value = np.asarray(tree)
  if value.dtype.kind in "biu" or value.dtype in (np.float32, np.float64):
    return value
  try:  # float16 and the ml_dtypes floats (bfloat16, ...) are widened exactly
    return value.astype(np.float32)
  except (TypeError, ValueError):
    raise CheckpointFormatError(f"an array has dtype {value.dtype}, not a numeric one") from None


def params_of(state: Mapping[str, Any]) -> Dict[str, Any]:
  """The parameter tree in a scenic train state dict (either layout, or bare params)."""
  optimizer = state.get("optimizer")
  if isinstance(optimizer, Mapping) and isinstance(optimizer.get("target"), Mapping):
    return dict(optimizer["target"])
  if isinstance(state.get("params"), Mapping) and state["params"]:
    return dict(state["params"])
  if "embedding" in state:
    return dict(state)
  raise CheckpointFormatError(
      f"no parameters in it: expected optimizer/target (older scenic) or params (newer scenic); "
      f"top-level keys are {sorted(str(k) for k in state)[:8]}")


def load_scenic(path: str) -> Dict[str, Any]:
  """The parameter tree (numpy) of a scenic / flax checkpoint file or workdir."""
  found = find_checkpoint(path)
  if os.path.isdir(found):
    if not _is_orbax_dir(found):
      raise CheckpointFormatError(f"{found} is a directory, not a checkpoint")
    state = _restore_orbax(found)
  else:
    state = _restore_msgpack(found)
  if not isinstance(state, Mapping):
    raise CheckpointFormatError(f"it holds a {type(state).__name__}, not a train state")
  return _numpy(params_of(state))
