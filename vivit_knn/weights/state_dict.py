"""The one reader of PyTorch-side weight files (timm, CLIP, VideoMAE, torchvision ResNet).

`.safetensors` (by extension) needs no torch; a TorchScript archive (OpenAI's
CLIP `.pt`) is read by `safe_pickle` without torch and without running it;
anything else by `torch.load(weights_only=True)`, which rebuilds only tensors,
plain containers and `argparse.Namespace` (the `args` VideoMAE's and other
DeiT-style training scripts save beside the weights): any other class stops the
read with an error naming it, its code never run.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from typing import Any, Dict, Mapping

import numpy as np

from vivit_knn.weights import safe_pickle
from vivit_knn.weights.tree import CheckpointFormatError, Flat, first_line

TORCH_REQUIREMENT = "torch==2.13.0"
SAFETENSORS_SUFFIX = ".safetensors"
# The only non-tensor class `torch.load` may rebuild.
ALLOWED_CLASSES = (argparse.Namespace,)

_CONTAINERS = ("state_dict", "model", "model_state", "module")
_PREFIXES = ("module.", "model.")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def unwrap(state: Mapping[str, Any]) -> Dict[str, Any]:
  """Finds the state dict in a training checkpoint and strips `module.`/`model.` prefixes."""
  for key in _CONTAINERS:
    if isinstance(state.get(key), Mapping):
      state = state[key]
      break
  state = dict(state)
  for prefix in _PREFIXES:
    if state and all(k.startswith(prefix) for k in state):
      state = {k[len(prefix):]: v for k, v in state.items()}
  return state


def _float32(state: Mapping[str, Any]) -> Flat:
  out = {}
  for key, value in state.items():
    if hasattr(value, "detach"):  # a torch tensor
      value = value.detach().float().numpy()
    if not isinstance(value, np.ndarray):
      raise CheckpointFormatError(f"entry {key!r} of the state dict is a {type(value).__name__}, "
                                  "not a tensor")
    out[key] = np.asarray(value, np.float32)
  return out


def _read_safetensors(path: str) -> Dict[str, Any]:
  import safetensors.numpy  # pylint: disable=import-outside-toplevel
  try:
    return safetensors.numpy.load_file(path)
  except (safetensors.SafetensorError, OSError, ValueError, TypeError) as err:
    raise CheckpointFormatError(f"not a .safetensors file ({first_line(err)})") from None


def _read_torch(path: str, what: str) -> Any:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(f"reading {what} needs PyTorch: pip install {TORCH_REQUIREMENT} (CPU build "
                      f"is enough), or give the weights as a {SAFETENSORS_SUFFIX} file") from None
  try:
    with torch.serialization.safe_globals(list(ALLOWED_CLASSES)):
      return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as err:
    found = _REFUSED_GLOBAL.search(str(err))
    if found:
      raise CheckpointFormatError(
          f"it holds a {found.group(1)} object, which a weights file does not need; not read "
          "(only tensors, plain containers and argparse.Namespace are). If you trust the file, "
          "save just its tensors (torch.save(state_dict, ...)) and read that") from None
    raise CheckpointFormatError(_not_torch(path, err)) from None
  except (RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
          OSError, zipfile.BadZipFile) as err:
    raise CheckpointFormatError(_not_torch(path, err)) from None


def _not_torch(path: str, err: BaseException) -> str:
  """Why torch could not read `path`, in one line of our own words."""
  if not zipfile.is_zipfile(path):
    return "not a file torch.save writes (neither its zip format nor its legacy pickle)"
  with zipfile.ZipFile(path) as archive:
    has_pickle = any(name.endswith("/data.pkl") for name in archive.namelist())
  if not has_pickle:
    return "a zip file, but not one torch.save writes (it has no <name>/data.pkl)"
  return f"a torch.save file that torch cannot read (truncated or corrupted?): {first_line(err)}"


def read_state_dict(path: str, what: str = "a PyTorch checkpoint") -> Flat:
  """`{name: float32 array}` of a state dict file; `what` (e.g. 'a timm checkpoint') for errors."""
  if not os.path.isfile(path):
    raise CheckpointFormatError(f"{path} is not a file")
  if path.lower().endswith(SAFETENSORS_SUFFIX):
    state = _read_safetensors(path)
  elif safe_pickle.is_torchscript(path):
    state = safe_pickle.read_torchscript_tensors(path)
  else:
    state = _read_torch(path, what)
  if not isinstance(state, Mapping):
    raise CheckpointFormatError(f"it holds a {type(state).__name__}, not a state dict")
  return _float32(unwrap(state))
