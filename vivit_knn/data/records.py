"""Random access to the records of TFRecord files through a byte-offset index.

A TFRecord file is a sequence of ``uint64 length | uint32 masked crc32c(length)
| data | uint32 masked crc32c(data)``. Scanning only the 12-byte headers gives
every record's offset without reading the data, so a dataset can read record
``i`` directly: the train stream then uses a true global shuffle, each host
reads only its own examples, and any step can be resumed exactly.
"""

from __future__ import annotations

import dataclasses
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


def record_size(data_length: int) -> int:
  """Bytes one record of ``data_length`` data bytes takes in a file."""
  return _HEADER + data_length + _FOOTER


def expand_files(pattern: str) -> list[str]:
  """Files named by ``name@N`` (``name-00000-of-0000N`` ...) or a glob.

  Raises:
    FileNotFoundError: naming the pattern if it matches nothing, or naming
      the first missing shard of a ``@N`` spec.
  """
  match = _SHARD_SPEC.match(pattern)
  if match:
    count = int(match["count"])
    files = [f"{match['base']}-{i:05d}-of-{count:05d}" for i in range(count)]
    for name in files:
      if not tf.io.gfile.exists(name):
        raise FileNotFoundError(
            f"shard {name} of the sharded file spec {pattern} does not exist")
    return files
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"no file matches {pattern}")
  return files


def _is_local(path: str) -> bool:
  return "://" not in path


def _read_at(path: str, offset: int, length: int, fds: dict,
             lock: threading.Lock) -> bytes:
  """``length`` bytes of ``path`` at ``offset`` (pread for local files)."""
  if _is_local(path):
    with lock:
      fd = fds.get(path)
      if fd is None:
        fd = fds[path] = os.open(path, os.O_RDONLY)
    return os.pread(fd, length, offset)
  with tf.io.gfile.GFile(path, "rb") as f:
    f.seek(offset)
    return f.read(length)


def scan_offsets(path: str) -> tuple[list[int], int, str]:
  """Record offsets of one file, where its intact part ends, and a problem.

  Scanning stops at the first header whose CRC fails (``corrupt``) or whose
  record runs past the end of the file (``truncated``); the records before
  it stay usable. The problem is ``''`` for a healthy file.
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
      end = offset + record_size(length)
      if end > size:
        return offsets, offset, skips.TRUNCATED
      offsets.append(offset)
      offset = end
  return offsets, offset, ""


@dataclasses.dataclass(frozen=True)
class RecordLocation:
  """Where record ``i`` of an index lives."""

  path: str
  offset: int
  ordinal: int  # Position within its file.

  def __str__(self) -> str:
    return f"{self.path} (record {self.ordinal})"


class RecordIndex:
  """Random-access view of the records of several TFRecord files, in order.

  Args:
    files: TFRecord paths; records are numbered file by file.
    known_offsets: Optional ``{path: offsets}`` (e.g. from converter
      metadata) that spares the header scan of those files.
    counter: Tally in which damaged files are counted (one skipped example
      per damaged tail); a private one if omitted.
    split: 'train' or 'eval' to attribute damaged files to that split in
      ``counter``; '' for none.
  """

  def __init__(self, files: list[str],
               known_offsets: dict[str, list[int]] | None = None,
               counter: skips.SkipCounter | None = None, split: str = ""):
    known_offsets = known_offsets or {}
    counter = counter or skips.SkipCounter()
    paths, offsets, ordinals, lengths = [], [], [], []
    for file_id, path in enumerate(files):
      if path in known_offsets:
        file_offsets = list(known_offsets[path])
        end = tf.io.gfile.stat(path).length
      else:
        file_offsets, end, problem = scan_offsets(path)
        if problem:
          key = (split, skips.LISTING_FILE, path) if split else ("file", path)
          counter.record(key, skips.BadVideoError(
              problem, path, f"damaged after record {len(file_offsets)}; "
              "the records before it are used"))
      file_offsets = np.asarray(file_offsets, np.int64)
      ends = np.append(file_offsets[1:], end)
      paths.append(np.full(len(file_offsets), file_id, np.int32))
      offsets.append(file_offsets)
      lengths.append(ends[:len(file_offsets)] - file_offsets - _HEADER -
                     _FOOTER)
      ordinals.append(np.arange(len(file_offsets), dtype=np.int64))
    self._files = list(files)
    self._file_ids = np.concatenate(paths or [np.zeros(0, np.int32)])
    self._offsets = np.concatenate(offsets or [np.zeros(0, np.int64)])
    self._lengths = np.concatenate(lengths or [np.zeros(0, np.int64)])
    self._ordinals = np.concatenate(ordinals or [np.zeros(0, np.int64)])
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
    counts = np.bincount(self._file_ids, minlength=len(self._files))
    return [0] + np.cumsum(counts)[:-1].tolist()

  def location(self, i: int) -> RecordLocation:
    """File, byte offset and in-file position of record ``i``."""
    return RecordLocation(self._files[self._file_ids[i]],
                          int(self._offsets[i]), int(self._ordinals[i]))

  def describe(self, i: int) -> str:
    """``'<file> (record <k>)'`` for record ``i``."""
    return str(self.location(i))

  def read(self, i: int) -> bytes:
    """The data bytes of record ``i``.

    Raises:
      BadVideoError: ``truncated`` if the file ended early (it changed since
        it was indexed).
    """
    loc = self.location(i)
    length = int(self._lengths[i])
    data = _read_at(loc.path, loc.offset + _HEADER, length, self._fds,
                    self._lock)
    if len(data) != length:
      raise skips.BadVideoError(skips.TRUNCATED, str(loc),
                                "file ended inside the record")
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
