"""Example tables: numbered videos that can be loaded one at a time.

A table maps an example number to ``(frames, label)``, decoding only the
frames its ``select`` argument asks for. Tables hide where videos live
(video files, TFRecord records, TFDS data sources); the pipelines in
:mod:`vivit_knn.data.clips` only see tables.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from vivit_knn.data import decode, video_io
from vivit_knn.data.video_io import FrameSelector

# Parses one serialized record into (encoded frames, label); ``source``
# names the record in errors.
RecordParser = Callable[[bytes, str], tuple[Sequence[bytes], int]]


class ExampleTable(abc.ABC):
  """A fixed, ordered collection of labelled videos."""

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of examples."""

  @abc.abstractmethod
  def describe(self, i: int) -> str:
    """Human-readable location of example ``i`` (for warnings)."""

  @abc.abstractmethod
  def load(self, i: int, select: FrameSelector) -> tuple[np.ndarray, int]:
    """``(uint8 [k, H, W, 3] frames, label)`` of example ``i``.

    Raises:
      BadVideoError: if the example cannot provide frames.
    """


class VideoFileTable(ExampleTable):
  """Video files decoded with PyAV."""

  def __init__(self, paths: Sequence[str], labels: Sequence[int]):
    if len(paths) != len(labels):
      raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    self.paths = list(paths)
    self.labels = [int(label) for label in labels]

  def __len__(self) -> int:
    return len(self.paths)

  def describe(self, i: int) -> str:
    """The video's path."""
    return self.paths[i]

  def load(self, i: int, select: FrameSelector) -> tuple[np.ndarray, int]:
    """Decodes the selected frames of video ``i`` with PyAV."""
    return video_io.read_video(self.paths[i], select), self.labels[i]


class RecordReader(Protocol):
  """Random access to serialized records (e.g. a ``RecordIndex``)."""

  def __len__(self) -> int:
    """Number of records."""

  def read(self, i: int) -> bytes:
    """Serialized record ``i``."""

  def describe(self, i: int) -> str:
    """Location of record ``i``."""


class RecordTable(ExampleTable):
  """Records holding encoded frames; only the selected frames are decoded."""

  def __init__(self, reader: RecordReader, parse: RecordParser):
    self._reader = reader
    self._parse = parse

  def __len__(self) -> int:
    return len(self._reader)

  def describe(self, i: int) -> str:
    """The record's location."""
    return self._reader.describe(i)

  def load(self, i: int, select: FrameSelector) -> tuple[np.ndarray, int]:
    """Parses record ``i`` and decodes each selected frame once."""
    source = self.describe(i)
    encoded, label = self._parse(self._reader.read(i), source)
    indices = np.asarray(select(len(encoded)), np.int64)
    unique, inverse = np.unique(indices, return_inverse=True)
    frames = decode.decode_frames([encoded[j] for j in unique.tolist()],
                                source)
    return frames[inverse], label
