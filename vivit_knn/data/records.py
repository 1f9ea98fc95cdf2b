"""Random access to the records of TFRecord files through a byte-offset index.

Scanning only the 12-byte record headers (see :mod:`.record_format`) gives every
record's offset, so a dataset reads record ``i`` directly: a true global shuffle,
each host reading only its own examples, and exact resumes.
"""

from __future__ import annotations

import os
import re
import struct
import threading

import numpy as np
import tensorflow as tf

from vivit_knn.data import skips
from vivit_knn.data.record_format import masked_crc32c

_HEADER = 12
_FOOTER = 4
_SHARD_SPEC = re.compile(r"^(?P<base>.+)@(?P<count>\d+)$")


def expand_files(pattern: str) -> list[str]:
  """Files named by ``name@N`` (``name-00000-of-0000N``...) or a glob; FileNotFoundError if none."""
  match = _SHARD_SPEC.match(pattern)
  if match:
    count = int(match["count"])
    files = [f"{match['base']}-{i:05d}-of-{count:05d}" for i in range(count)]
    for name in files:
      if not tf.io.gfile.exists(name):
        raise FileNotFoundError(f"shard {name} of the sharded file spec {pattern} does not exist")
    return files
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"no file matches {pattern}")
  return files


def _read_at(path: str, offset: int, length: int, fds: dict, lock: threading.Lock) -> bytes:
  """``length`` bytes of ``path`` at ``offset`` (pread for local files)."""
  if "://" not in path:
    with lock:
      fd = fds.get(path)
      if fd is None:
        fd = fds[path] = os.open(path, os.O_RDONLY)
    return os.pread(fd, length, offset)
  with tf.io.gfile.GFile(path, "rb") as f:
    f.seek(offset)
    return f.read(length)


def scan_offsets(path: str) -> tuple[list[int], int, str]:
  """Record offsets of one file, where its intact part ends, and its problem ('' if none).

  Scanning stops at the first header whose CRC fails (``corrupt``) or whose
  record runs past the end of the file (``truncated``).
  """
  offsets: list[int] = []
  size = tf.io.gfile.stat(path).length
  offset = 0
  with tf.io.gfile.GFile(path, "rb") as f:
    while offset < size:
      f.seek(offset)
      header = f.read(_HEADER)
      if len(header) < _HEADER:
        return offsets, offset, skips.TRUNCATED
      length, crc = struct.unpack("<QI", header)
      if masked_crc32c(header[:8]) != crc:
        return offsets, offset, skips.CORRUPT
      end = offset + _HEADER + length + _FOOTER
      if end > size:
        return offsets, offset, skips.TRUNCATED
      offsets.append(offset)
      offset = end
  return offsets, offset, ""


class RecordIndex:
  """Random-access view of the records of several TFRecord files, numbered file by file.

  ``known_offsets`` (``{path: offsets}``, e.g. from converter metadata) spares
  the header scan of those files. Each damaged file tail counts as one skipped
  example in ``counter``, for ``split`` ('train', 'eval' or '' for none).
  """

  def __init__(self, files: list[str], known_offsets: dict[str, list[int]] | None = None,
               counter: skips.SkipCounter | None = None, split: str = ""):
    known_offsets = known_offsets or {}
    counter = counter or skips.SkipCounter()
    offsets, ends = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for path in files:
      if path in known_offsets:
        file_offsets, end = known_offsets[path], tf.io.gfile.stat(path).length
      else:
        file_offsets, end, problem = scan_offsets(path)
        if problem:
          key = (split, skips.LISTING_FILE, path) if split else ("file", path)
          detail = f"damaged after record {len(file_offsets)}; the records before it are used"
          counter.record(key, skips.BadVideoError(problem, path, detail))
      offsets.append(np.asarray(file_offsets, np.int64))
      ends.append(np.append(offsets[-1][1:], end)[:len(file_offsets)])
    self._files = list(files)
    self._counts = [len(o) for o in offsets[1:]]
    self._file_ids = np.repeat(np.arange(len(files), dtype=np.int32), self._counts)
    self._offsets = np.concatenate(offsets)
    self._lengths = np.concatenate(ends) - self._offsets - _HEADER - _FOOTER
    self._ordinals = np.arange(len(self._offsets)) - np.repeat(self.file_starts(), self._counts)
    self._fds: dict[str, int] = {}
    self._lock = threading.Lock()

  @property
  def files(self) -> list[str]:
    """The indexed files, in record order."""
    return list(self._files)

  def __len__(self) -> int:
    return len(self._offsets)

  def file_starts(self) -> list[int]:
    """Number of the first record of each file."""
    return [0] + np.cumsum(self._counts)[:-1].tolist()

  def describe(self, i: int) -> str:
    """``'<file> (record <k>)'`` for record ``i``."""
    return f"{self._files[self._file_ids[i]]} (record {int(self._ordinals[i])})"

  def read(self, i: int) -> bytes:
    """The data bytes of record ``i``; BadVideoError ``truncated`` if the file got shorter."""
    length = int(self._lengths[i])
    data = _read_at(self._files[self._file_ids[i]], int(self._offsets[i]) + _HEADER,
                    length, self._fds, self._lock)
    if len(data) != length:
      raise skips.BadVideoError(skips.TRUNCATED, self.describe(i), "file ended inside the record")
    return data

  def close(self) -> None:
    """Closes the file descriptors opened for reading."""
    with self._lock:
      for fd in self._fds.values():
        os.close(fd)
      self._fds.clear()

  def __del__(self):
    try:
      self.close()
    except Exception:  # Interpreter shutdown: nothing left to release.
      pass
