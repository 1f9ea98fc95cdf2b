"""Reads the tensors of a TorchScript archive without running anything from it (no torch needed).

OpenAI released CLIP as TorchScript archives (`ViT-B-16.pt`, fp16); `torch.jit.load`
would run the archive's code. An archive is a zip with one root folder holding
`data.pkl` (the module hierarchy: objects of `__torch__.*` classes whose state
is a dict of submodules, tensors and plain values), `data/<key>` (the raw bytes
of each storage), `byteorder` (absent in old archives: little) and code that is
never read. `data.pkl` is read with an unpickler that resolves only the globals
such a pickle uses, to local side-effect-free stand-ins, and makes every
`__torch__.*` class an inert placeholder; any other global stops the read before
anything is called. Tensors are rebuilt in numpy from their storage bytes after
a bounds check.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any, Callable, Dict

import numpy as np

from vivit_knn.weights.npz import bfloat16_to_float32
from vivit_knn.weights.tree import CheckpointFormatError, Flat, first_line

# Storage type -> numpy dtype of its elements ('bfloat16' is widened to float32).
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


def is_torchscript(path: str) -> bool:
  """True for a TorchScript archive: a zip with `<root>/constants.pkl` (plain saves have none)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(name.endswith("/constants.pkl") for name in archive.namelist())


class _StorageType:  # a `torch.<X>Storage` class named in a persistent id
  __slots__ = ("name",)

  def __init__(self, name: str):
    self.name = name


class _Function:
  """A fresh, attribute-less wrapper of one allowed function (so a pickle cannot alter it)."""

  __slots__ = ("fn",)

  def __init__(self, fn: Callable[..., Any]):
    self.fn = fn

  def __call__(self, *args: Any) -> Any:
    return self.fn(*args)


class _Storage:  # one storage's elements, as a flat numpy array
  __slots__ = ("array", "bf16")

  def __init__(self, array: np.ndarray, bf16: bool):
    self.array, self.bf16 = array, bf16


class ScriptObject:
  """Inert stand-in for an object of a TorchScript class: it only keeps its pickled state."""

  def __setstate__(self, state: Any) -> None:
    """Records the pickled state (for a module: the dict of its attributes)."""
    self.__dict__["_state"] = state

  @property
  def state(self) -> Any:
    """The pickled state, or None."""
    return self.__dict__.get("_state")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *unused: Any) -> np.ndarray:
  """numpy version of `torch._utils._rebuild_tensor_v2` (a copy; bounds checked)."""
  del unused
  if not isinstance(storage, _Storage):
    raise CheckpointFormatError("a tensor in data.pkl does not refer to a storage")
  size, stride = tuple(size), tuple(stride)
  ints = (offset,) + size + stride
  if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints):
    raise CheckpointFormatError(f"a tensor in data.pkl has a bad layout: size {size}, "
                                f"stride {stride}, offset {offset}")
  array = storage.array
  # Checked here, when used: a pickle can BUILD onto any object it holds.
  if not (isinstance(array, np.ndarray) and array.ndim == 1 and array.dtype.kind in "biuf"):
    raise CheckpointFormatError("a storage in data.pkl was altered by the pickle")
  if int(np.prod(size, dtype=np.float64)) > array.size:
    raise CheckpointFormatError(f"a tensor in data.pkl has more elements than its storage "
                                f"(size {size}, storage {array.size})")
  if any(n == 0 for n in size):
    out = np.zeros(size, array.dtype)
  else:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= array.size:
      raise CheckpointFormatError(f"a tensor in data.pkl reads past its storage "
                                  f"({last + 1} > {array.size} elements)")
    view = np.lib.stride_tricks.as_strided(
        array[offset:], shape=size, strides=[s * array.itemsize for s in stride], writeable=False)
    out = np.array(view)
  return bfloat16_to_float32(out) if storage.bf16 is True else out


def _identity(value: Any, *unused: Any) -> Any:
  del unused
  return value


def _ordered_dict(*args: Any) -> dict:
  if args:
    raise CheckpointFormatError("data.pkl builds an OrderedDict with arguments")
  return {}


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _identity,
    ("collections", "OrderedDict"): _ordered_dict,
    **{("torch.jit._pickle", name): _identity for name in (
        "build_intlist", "build_doublelist", "build_boollist", "build_tensorlist",
        "build_genericlist", "restore_type_tag")},
}


class _Unpickler(pickle.Unpickler):
  """Resolves only the globals of a TorchScript `data.pkl`; refuses everything else."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, byteorder: str):
    super().__init__(io.BytesIO(data))
    self._archive, self._root, self._byteorder = archive, root, byteorder
    self._storages: Dict[str, _Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    """The local stand-in for `module.name`; raises for any global a weights file does not need."""
    if module == "__torch__" or module.startswith("__torch__."):
      return ScriptObject
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _GLOBALS:
      return _Function(_GLOBALS[(module, name)])
    raise CheckpointFormatError(
        f"data.pkl refers to {module}.{name}, which a weights file does not need; refusing to "
        "read it")

  def persistent_load(self, pid: Any) -> _Storage:
    """Reads the storage `('storage', type, key, location, numel)` from `<root>/data/<key>`."""
    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
      raise CheckpointFormatError(f"data.pkl has an unknown persistent id {pid!r:.80}")
    type_name, key = pid[1].name, pid[2]
    if not (isinstance(type_name, str) and type_name in _STORAGE_DTYPES):
      raise CheckpointFormatError("data.pkl names an unknown storage type")
    if key not in self._storages:
      name = f"{self._root}/data/{key}"
      try:
        raw = self._archive.read(name)
      except KeyError:
        raise CheckpointFormatError(f"the archive lacks the tensor data {name}") from None
      bf16 = _STORAGE_DTYPES[type_name] == "bf16"
      dtype = np.dtype("u2" if bf16 else _STORAGE_DTYPES[type_name])
      if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<" if self._byteorder == "little" else ">")
      usable = len(raw) - len(raw) % dtype.itemsize
      array = np.frombuffer(raw[:usable], dtype)
      if bf16:
        array = array.astype("<u2")
      self._storages[key] = _Storage(array, bf16)
    return self._storages[key]


def _root(archive: zipfile.ZipFile) -> str:
  roots = {name.split("/")[0] for name in archive.namelist()
           if name.count("/") == 1 and name.endswith("/data.pkl")}
  if len(roots) != 1:
    raise CheckpointFormatError("not a TorchScript archive: expected exactly one <root>/data.pkl")
  return roots.pop()


def _collect(obj: Any, prefix: str, out: Flat, seen: set) -> None:
  """Adds the tensor attributes of a module (and of its submodules, recursively) to `out`."""
  if id(obj) in seen:
    return
  seen.add(id(obj))
  state = obj.state
  if not isinstance(state, dict):
    return
  for name, value in state.items():
    if not isinstance(name, str):
      continue
    if isinstance(value, np.ndarray):
      out[prefix + name] = value
    elif isinstance(value, ScriptObject):
      _collect(value, f"{prefix}{name}.", out, seen)


def read_torchscript_tensors(path: str) -> Flat:
  """`{dotted attribute path: numpy array}` of every tensor attribute of a TorchScript module.

  For a module of parameters and buffers this is its `state_dict()` (dtype as
  stored; bf16 widened to float32). No code from the archive is run.
  """
  if not zipfile.is_zipfile(path):
    raise CheckpointFormatError("not a TorchScript archive (not a zip file)")
  with zipfile.ZipFile(path) as archive:
    root = _root(archive)
    byteorder = "little"
    if f"{root}/byteorder" in archive.namelist():
      byteorder = archive.read(f"{root}/byteorder").decode("ascii", "replace").strip()
      if byteorder not in ("little", "big"):
        raise CheckpointFormatError(f"unknown byte order {byteorder!r:.20}")
    data = archive.read(f"{root}/data.pkl")
    try:
      module = _Unpickler(data, archive, root, byteorder).load()
    except CheckpointFormatError:
      raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, RecursionError) as err:
      raise CheckpointFormatError(f"cannot read its data.pkl ({first_line(err)})") from None
  if not isinstance(module, ScriptObject):
    raise CheckpointFormatError("its data.pkl does not hold a TorchScript module")
  out: Flat = {}
  try:
    _collect(module, "", out, set())
  except RecursionError:
    raise CheckpointFormatError("its data.pkl nests modules too deeply") from None
  return out

