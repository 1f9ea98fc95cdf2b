"""Real-video examples and the tf.data pipelines shared by every real source.

Stored frames are decoded by TensorFlow's image decoders, eagerly: faster than
Pillow's, GIL-free, and a damaged image raises an exception that can be counted and skipped.

A bad video never stops a run: in training the next good one in table order
takes its place, in evaluation it becomes a masked slot; it is counted once and
a warning names its file.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from vivit_knn.data import base, processors, skips, video_io
from vivit_knn.data.options import ProcessSpec
from vivit_knn.data.video_io import FrameSelector

# Python ints of any size map to a valid numpy / TF seed word.
_SEED_MASK = 2**63 - 1
_JPEG_MAGIC = b"\xff\xd8"
# Eager op errors carry "{{function_node ...}}" and "[Op:...]" decorations.
_OP_NOISE = re.compile(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]")


def check_data_dir(data_dir: str) -> None:
  """Raises FileNotFoundError naming ``dataset.data_dir`` if it is set but absent."""
  if data_dir and not tf.io.gfile.isdir(data_dir):
    raise FileNotFoundError(f"dataset.data_dir={data_dir} does not exist or is not a directory")


def decode_frames(encoded: Sequence[bytes], source: str) -> np.ndarray:
  """uint8 ``[n, H, W, 3]`` frames; BadVideoError ``bad_jpeg`` if one fails or sizes differ."""
  frames = []
  for i, data in enumerate(encoded):
    try:
      if data[:2] == _JPEG_MAGIC:
        image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_FAST")
      else:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError) as err:
      detail = _OP_NOISE.sub("", getattr(err, "message", str(err)))
      raise skips.BadVideoError(skips.BAD_JPEG, source, f"frame {i}: {detail}") from err
    frames.append(image.numpy())
  if len({f.shape for f in frames}) > 1:
    raise skips.BadVideoError(skips.BAD_JPEG, source, "frames differ in size")
  return np.stack(frames)


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
    """``(uint8 [k, H, W, 3] frames, label)`` of example ``i``; BadVideoError if it has none."""


class VideoFileTable(ExampleTable):
  """Video files decoded with PyAV."""

  def __init__(self, paths: Sequence[str], labels: Sequence[int]):
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


class RecordTable(ExampleTable):
  """Records holding encoded frames; only the selected frames are decoded.

  ``reader`` gives random access to the serialized records: ``len``,
  ``read(i)`` and ``describe(i)``, as :class:`~vivit_knn.data.records.RecordIndex`;
  ``parse(record, location)`` gives ``(encoded frames, label)``.
  """

  def __init__(self, reader, parse: Callable[[bytes, str], tuple[Sequence[bytes], int]]):
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
    frames = decode_frames([encoded[j] for j in unique.tolist()], source)
    return frames[inverse], label


class ClipDataset(base.VideoDataset):
  """Real videos with DMVR-style sampling and processing.

  ``counter`` is the tally of skipped examples that already holds what the
  source skipped while listing files.
  """

  decode_with_position = True

  def __init__(self, train: ExampleTable, eval_: ExampleTable,
               class_names: Sequence[str], spec: ProcessSpec,
               counter: skips.SkipCounter | None = None):
    for name, table in (("train", train), ("eval", eval_)):
      if not len(table):
        raise ValueError(f"the {name} split has no examples")
    self._train, self._eval, self._spec = train, eval_, spec
    self._counter = counter or skips.SkipCounter()
    # Example numbers read at least once per split: whether every listed video was tried.
    self._tried: dict[str, set[int]] = {"train": set(), "eval": set()}
    self._info = base.DatasetInfo(len(class_names), tuple(class_names), len(train), len(eval_),
                                  spec.clip_shape)

  @property
  def info(self) -> base.DatasetInfo:
    """Static description of the dataset."""
    return self._info

  def _table(self, split: str) -> ExampleTable:
    return self._train if base.check_split(split) == "train" else self._eval

  def skipped_examples(self) -> dict[str, int]:
    """Distinct examples skipped so far, by reason."""
    return self._counter.counts()

  def split_counts(self, split: str) -> dict[str, int | None]:
    """See :meth:`base.VideoDataset.split_counts`; absent files and damaged record tails count."""
    table = self._table(split)
    pre_listing = (self._counter.split_count(split, skips.LISTING_MISSING) +
                   self._counter.split_count(split, skips.LISTING_FILE))
    listed = len(table) + pre_listing
    skipped = self._counter.split_count(split)
    complete = len(self._tried[split]) >= len(table)
    return {"listed": listed, "readable": listed - skipped if complete else None,
            "skipped": skipped}

  def describe_example(self, split: str, index: int) -> str:
    """The file (or record location) of example ``index`` of ``split``."""
    return self._table(split).describe(int(index))

  def skipped_sources(self, split: str) -> list[str]:
    """See :meth:`base.VideoDataset.skipped_sources`."""
    return self._counter.split_sources(base.check_split(split))

  def _load(self, split: str, table: ExampleTable, i: int, select):
    """``(frames, label)`` of example ``i``, or None after counting a skip."""
    self._tried[split].add(i)
    key = (split, i)
    if self._counter.is_skipped(key):
      return None
    try:
      frames, label = table.load(i, select)
      if not 0 <= label < self._info.num_classes:
        raise skips.BadVideoError(skips.BAD_LABEL, table.describe(i),
                                  f"label {label} not in [0, {self._info.num_classes})")
      return frames, np.int32(label)
    except skips.BadVideoError as err:
      self._counter.record(key, err)
    except Exception as err:  # A decoder failing in an unforeseen way.
      self._counter.record(key, skips.BadVideoError(
          skips.CORRUPT, table.describe(i), f"{type(err).__name__}: {err}"))
    return None

  def load_train_example(self, index: int, seed: int, position: int) -> tuple[np.ndarray, np.int32]:
    """Sampled uint8 frames and label for train slot ``position`` (the next example if bad)."""
    table = self._train
    rng = np.random.default_rng([seed & _SEED_MASK, position])
    for attempt in range(len(table)):
      loaded = self._load("train", table, (index + attempt) % len(table),
                          lambda n: processors.clip_indices(self._spec, n, rng))
      if loaded is not None:
        return loaded
    raise RuntimeError(f"none of the {len(table)} train videos could be decoded; the warnings "
                       "above name the files")

  def load_eval_example(self, index: int):
    """``(num_test_clips * num_frames frames, label, valid)`` of eval example ``index``.

    A bad example gives black frames and ``valid = False``.
    """
    spec = self._spec
    loaded = self._load("eval", self._eval, index, lambda n: processors.view_indices(spec, n))
    if loaded is not None:
      return loaded[0], loaded[1], True
    shape = (spec.num_test_clips * spec.num_frames, spec.image_size, spec.image_size, 3)
    return np.zeros(shape, np.uint8), np.int32(0), False

  def _train_decode_fn(self, seed: int):
    """tf.data map function: (example number, stream position) -> clip."""
    spec = self._spec
    seed_word = tf.constant(seed & _SEED_MASK, tf.int64)

    def decode(index, position):
      frames, label = tf.numpy_function(
          lambda i, p: self.load_train_example(int(i), seed, int(p)),
          [index, position], (tf.uint8, tf.int32), stateful=False)
      frames.set_shape([spec.num_frames, None, None, 3])
      label.set_shape([])
      clip = processors.train_clip(frames, tf.stack([seed_word, position]), spec)
      return {"inputs": clip, "label": label}

    return decode

  def _eval_decode_fn(self):
    """tf.data map function: example number -> views, label, valid."""
    spec = self._spec

    def decode(index):
      frames, label, valid = tf.numpy_function(lambda i: self.load_eval_example(int(i)), [index],
                                               (tf.uint8, tf.int32, tf.bool), stateful=False)
      frames.set_shape([spec.num_test_clips * spec.num_frames, None, None, 3])
      label.set_shape([])
      valid.set_shape([])
      views = processors.test_views(frames, spec)
      return {"inputs": views[0] if spec.num_views == 1 else views, "label": label, "valid": valid}

    return decode
