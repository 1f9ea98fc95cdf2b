"""The one `.npz` reader of the weight converters (original ViT and big_vision files).

Never unpickles (`allow_pickle=False`). big_vision writes bfloat16 arrays as
2-byte void (the raw bits); they are widened to float32 exactly. Training files
nest the parameters under a prefix (`KNOWN_PREFIXES`: vit_jax `opt/target/`,
big_vision `params/`, a two-tower model's image tower `params/img/`), which
`strip_prefix` removes.
"""

from __future__ import annotations

import os
import zipfile
from typing import List, Mapping

import numpy as np

from vivit_knn.weights.tree import CheckpointFormatError, Flat

KNOWN_PREFIXES = ("opt/target/", "params/img/", "params/")
ANCHOR = "embedding/kernel"
_NPY_MAGIC = b"\x93NUMPY"


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
  """Raw bfloat16 values (2-byte void or uint16 bits, little-endian) -> float32, exactly."""
  bits = np.ascontiguousarray(raw).view("<u2")
  return (bits.astype("<u4") << 16).view("<f4")


def _array(name: str, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value)
  if value.dtype.kind == "V" and value.dtype.itemsize == 2 and value.dtype.names is None:
    return bfloat16_to_float32(value)
  if value.dtype.kind in "VOSUM":
    raise CheckpointFormatError(f"array {name!r} has dtype {value.dtype.str}, not a numeric one")
  return value


def load_npz(path: str) -> Flat:
  """Reads an `.npz` archive into `{key: array}` (bf16 as float32; no pickles)."""
  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      head = f.read(len(_NPY_MAGIC))
    if head == _NPY_MAGIC:
      raise CheckpointFormatError("a single .npy array, not an .npz archive of named arrays")
    raise CheckpointFormatError("not an .npz archive (not a zip file)")
  out: Flat = {}
  with open(path, "rb") as f:
    try:
      data = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
      raise CheckpointFormatError("numpy cannot read it as an .npz archive") from None
    with data:
      for key in data.files:
        try:
          value = data[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError):
          value = None
        if not isinstance(value, np.ndarray):
          raise CheckpointFormatError(
              f"member {key!r} is not a numpy array (a zip file, not an .npz archive?)")
        out[key] = _array(key, value)
  if not out:
    raise CheckpointFormatError(f"the archive holds no arrays ({os.path.basename(path)})")
  return out


def common_prefix(keys: List[str]) -> str:
  """The longest `/`-ended path prefix all `keys` share ('' if none)."""
  shared = []
  for names in zip(*[k.split("/")[:-1] for k in keys]):
    if len(set(names)) > 1:
      break
    shared.append(names[0])
  return "".join(f"{n}/" for n in shared)


def strip_prefix(flat: Mapping[str, np.ndarray], what: str) -> Flat:
  """`flat`, or only what lies under the first of `KNOWN_PREFIXES` leading to `embedding/kernel`."""
  if ANCHOR in flat:
    return dict(flat)
  for prefix in KNOWN_PREFIXES:
    if prefix + ANCHOR in flat:
      return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  keys = sorted(flat)
  shared = common_prefix(keys)
  found = (f"keys start with {shared!r}" if shared
           else f"keys are e.g. {', '.join(repr(k) for k in keys[:4])}")
  raise CheckpointFormatError(
      f"{what}: no {ANCHOR!r} found; {found}; expected {ANCHOR!r} at the top level or under "
      f"one of the prefixes {', '.join(KNOWN_PREFIXES)}")
