"""Dataset interface shared by every video source, plus tf.data helpers.

A dataset exposes a static :class:`DatasetInfo` and two iterators of host-local
numpy batches. Any source whose examples can be listed as a finite sequence of
cheap *records* (example indices, file paths, serialized protos) can build both
iterators from :func:`make_train_dataset` / :func:`make_eval_dataset`, which
provide the resumable shuffling, host slicing and eval padding semantics the
trainer relies on.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

# Records whose epochs follow the start epoch are produced by a counter; this
# bound is never reached in practice but keeps the stream formally finite.
_MAX_EPOCHS = 2**62

DecodeFn = Callable[[Any], dict[str, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset.

  Attributes:
    num_classes: Number of target classes.
    class_names: Human-readable name of each class, indexed by label.
    num_train_examples: Size of the train split.
    num_eval_examples: Size of the eval split.
    input_shape: ``(T, H, W, C)`` of one model input clip.
  """

  num_classes: int
  class_names: tuple[str, ...]
  num_train_examples: int
  num_eval_examples: int
  input_shape: tuple[int, int, int, int]

  def __post_init__(self):
    if len(self.class_names) != self.num_classes:
      raise ValueError(
          f"class_names has {len(self.class_names)} entries but "
          f"num_classes is {self.num_classes}")
    if len(self.input_shape) != 4:
      raise ValueError(
          f"input_shape must be (T, H, W, C), got {self.input_shape}")


class VideoDataset(abc.ABC):
  """Interface consumed by the trainer.

  Subclasses provide :attr:`info`, :meth:`train_batches` and
  :meth:`eval_batches`. All batches are dicts of numpy arrays holding this
  host's slice of the global batch.
  """

  @property
  @abc.abstractmethod
  def info(self) -> DatasetInfo:
    """Static description of the dataset."""

  @abc.abstractmethod
  def train_batches(self, global_batch_size: int, *, start_step: int = 0,
                    seed: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[dict]:
    """Infinite stream of this host's slice of each global train batch.

    Each element is ``{'inputs': float32 [b, T, H, W, C], 'label': int32
    [b]}`` with ``b = global_batch_size // process_count``. The stream is
    a deterministic function of ``(seed, step)``: starting at
    ``start_step=s`` yields exactly the uninterrupted stream from step
    ``s`` on. Epoch ``e`` is a fresh shuffle seeded by ``(seed, e)``; the
    incomplete last global batch of every epoch is dropped.
    """

  @abc.abstractmethod
  def eval_batches(self, global_batch_size: int, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
    """One pass over the eval split in fixed order.

    Each element holds ``'inputs'``, ``'label'``, ``'mask'`` (float32,
    1 for real examples, 0 for padding) and ``'index'`` (int32 example
    id, -1 for padding). The last global batch is padded to full size.
    """

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Number of train steps in one epoch (incomplete batch dropped)."""
    return self.info.num_train_examples // global_batch_size

  def num_eval_batches(self, global_batch_size: int) -> int:
    """Number of batches yielded by one :meth:`eval_batches` pass."""
    return -(-self.info.num_eval_examples // global_batch_size)

  def skipped_examples(self) -> dict[str, int]:
    """Examples skipped so far in this process, counted by reason.

    Sources that can meet undecodable data count each distinct bad example
    once (e.g. ``{'corrupt': 2, 'zero_frames': 1}``); sources that cannot
    return ``{}``.
    """
    return {}

  def split_counts(self, split: str) -> dict[str, int | None]:
    """How many videos ``split`` ('train' or 'eval') lists, reads and skips.

    Returns:
      ``{'listed': n, 'readable': r, 'skipped': s}``: ``listed`` counts the
      videos (or records) the split names, including those found bad while
      listing (absent files, damaged record tails); ``skipped`` the distinct
      ones skipped so far in this process; ``readable`` is ``listed -
      skipped`` once every listed video has been read, and ``None`` before
      (unknown until decoded). This default is for sources that cannot meet
      bad data: nothing skipped, readability unknown.

    Raises:
      ValueError: if ``split`` is not 'train' or 'eval'.
    """
    if check_split(split) == "train":
      listed = self.info.num_train_examples
    else:
      listed = self.info.num_eval_examples
    return {"listed": listed, "readable": None, "skipped": 0}

  def describe_example(self, split: str, index: int) -> str:
    """Where example ``index`` of ``split`` comes from (a file name when known).

    Raises:
      ValueError: if ``split`` is not 'train' or 'eval'.
    """
    return f"{check_split(split)}:{int(index)}"

  def skipped_sources(self, split: str) -> list[str]:
    """One line per video of ``split`` skipped so far: its location and why.

    Raises:
      ValueError: if ``split`` is not 'train' or 'eval'.
    """
    check_split(split)
    return []


SPLITS = ("train", "eval")


def check_split(split: str) -> str:
  """Returns ``split`` if it is 'train' or 'eval'.

  Raises:
    ValueError: naming the accepted values otherwise.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  return split


class TfDataVideoDataset(VideoDataset):
  """A :class:`VideoDataset` whose batches come from tf.data pipelines.

  Subclasses build :meth:`train_dataset` and :meth:`eval_dataset`; the numpy
  batch streams the trainer reads are derived from them here.
  """

  @abc.abstractmethod
  def train_dataset(self, global_batch_size: int, *, start_step: int = 0,
                    seed: int = 0, process_index: int = 0,
                    process_count: int = 1) -> tf.data.Dataset:
    """The tf.data pipeline behind :meth:`train_batches` (same contract)."""

  @abc.abstractmethod
  def eval_dataset(self, global_batch_size: int, *, process_index: int = 0,
                   process_count: int = 1) -> tf.data.Dataset:
    """The tf.data pipeline behind :meth:`eval_batches` (same contract)."""

  def train_batches(self, global_batch_size: int, *, start_step: int = 0,
                    seed: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[dict]:
    """See :meth:`VideoDataset.train_batches`."""
    return as_numpy_batches(self.train_dataset(
        global_batch_size, start_step=start_step, seed=seed,
        process_index=process_index, process_count=process_count))

  def eval_batches(self, global_batch_size: int, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
    """See :meth:`VideoDataset.eval_batches`."""
    return as_numpy_batches(self.eval_dataset(
        global_batch_size, process_index=process_index,
        process_count=process_count))


def check_batch_args(global_batch_size: int, process_index: int,
                     process_count: int) -> int:
  """Validates batch/host arguments and returns the per-host batch size.

  Raises:
    ValueError: if ``global_batch_size`` is not a positive multiple of
      ``process_count`` or ``process_index`` is out of range.
  """
  if process_count < 1:
    raise ValueError(f"process_count must be >= 1, got {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index must be in [0, {process_count}), got "
        f"{process_index}")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size must be >= 1 and divisible by process_count="
        f"{process_count}, got {global_batch_size}")
  return global_batch_size // process_count


def _is_host_position(position: tf.Tensor, global_batch_size: int,
                      local_batch_size: int, process_index: int) -> tf.Tensor:
  """Whether stream position ``position`` belongs to this host's slice."""
  return tf.equal((position % global_batch_size) // local_batch_size,
                  process_index)


def _decode_to_batches(ds: tf.data.Dataset, decode_fn: DecodeFn,
                       local_batch_size: int, decode_batched: bool,
                       num_parallel_calls: int) -> tf.data.Dataset:
  """Decodes a stream of records and groups it into host-local batches."""
  if decode_batched:
    ds = ds.batch(local_batch_size, drop_remainder=True)
    return ds.map(decode_fn, num_parallel_calls=num_parallel_calls,
                  deterministic=True)
  ds = ds.map(decode_fn, num_parallel_calls=num_parallel_calls,
              deterministic=True)
  return ds.batch(local_batch_size, drop_remainder=True)


def _cast_outputs(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Enforces the dtypes promised by the :class:`VideoDataset` contract."""
  batch = dict(batch)
  batch["inputs"] = tf.cast(batch["inputs"], tf.float32)
  batch["label"] = tf.cast(batch["label"], tf.int32)
  return batch


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Pins the element order regardless of parallel map timing."""
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _shuffled_epoch(records: tf.data.Dataset, num_records: int, seed: int,
                    epoch: tf.Tensor) -> tf.data.Dataset:
  """All records of one epoch in an order seeded by ``(seed, epoch)``.

  A stateless permutation is used instead of ``Dataset.shuffle`` because the
  latter also depends on TensorFlow's global seed, which would make the
  order change if any other code calls ``tf.random.set_seed``.
  """
  epoch_seed = tf.stack([tf.constant(seed, tf.int64),
                         tf.cast(epoch, tf.int64)])
  perm = tf.random.experimental.stateless_shuffle(
      tf.range(num_records, dtype=tf.int64), seed=epoch_seed)

  def permute(*all_records):
    # tf.data splats tuple elements into positional arguments.
    all_records = all_records[0] if len(all_records) == 1 else all_records
    return tf.nest.map_structure(lambda x: tf.gather(x, perm), all_records)

  return records.batch(num_records).map(permute).unbatch()


def make_train_dataset(records: tf.data.Dataset, num_records: int,
                       global_batch_size: int, decode_fn: DecodeFn, *,
                       seed: int = 0, start_step: int = 0,
                       process_index: int = 0, process_count: int = 1,
                       decode_batched: bool = False,
                       num_parallel_calls: int = tf.data.AUTOTUNE,
                       prefetch: int = 2,
                       decode_with_position: bool = False) -> tf.data.Dataset:
  """Builds the deterministic, resumable, host-sliced train pipeline.

  Every epoch ``e`` visits all ``num_records`` records in a permutation
  seeded by ``(seed, e)``, keeps the first
  ``(num_records // global_batch_size) * global_batch_size`` of them, and
  cuts them into global batches; this host keeps its contiguous
  ``global_batch_size // process_count`` slice of each. Starting at
  ``start_step`` skips whole epochs arithmetically and the remaining offset
  on the cheap records, so skipped examples are never decoded; only this
  host's records are decoded.

  Args:
    records: Finite dataset of cheap per-example records (indices, paths,
      serialized examples) with exactly ``num_records`` elements in a fixed
      order. They are materialised in memory once per epoch for the
      shuffle.
    num_records: Number of elements of ``records``.
    global_batch_size: Batch size summed over all hosts.
    decode_fn: Maps a record (or, if ``decode_batched``, a batch of
      ``global_batch_size // process_count`` records) to a dict with at
      least ``'inputs'`` and ``'label'``; the expensive work belongs here.
      A structured record (tuple/dict) is passed as one argument.
    seed: Shuffle seed.
    start_step: First global step to produce.
    process_index: Index of this host.
    process_count: Number of hosts.
    decode_batched: Whether ``decode_fn`` takes a batch of records.
    num_parallel_calls: Parallelism of ``decode_fn``.
    prefetch: Number of batches to prefetch.
    decode_with_position: Whether ``decode_fn`` also receives, as a second
      argument, the int64 position of the record in the uninterrupted
      global stream (``step * global_batch_size + slot``). It is unique per
      drawn example and identical after a resume, so it can seed random
      augmentation.

  Returns:
    An infinite ``tf.data.Dataset`` of host-local batches.

  Raises:
    ValueError: on invalid batch/host arguments, a negative ``start_step``,
      or fewer records than one global batch.
  """
  local_batch_size = check_batch_args(global_batch_size, process_index,
                                      process_count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  steps_per_epoch = num_records // global_batch_size
  if steps_per_epoch < 1:
    raise ValueError(
        f"global_batch_size={global_batch_size} exceeds the number of "
        f"train examples ({num_records})")
  records_per_epoch = steps_per_epoch * global_batch_size
  first_epoch, step_in_epoch = divmod(start_step, steps_per_epoch)

  def epoch_records(epoch):
    return _shuffled_epoch(records, num_records, seed,
                           epoch).take(records_per_epoch)

  ds = epoch_records(tf.constant(first_epoch, tf.int64)).skip(
      step_in_epoch * global_batch_size)
  ds = ds.concatenate(
      tf.data.Dataset.range(first_epoch + 1, _MAX_EPOCHS).flat_map(
          epoch_records))
  # Every epoch (and the skipped prefix) is a whole number of global
  # batches, so the running position modulo the global batch size is the
  # position inside the current global batch.
  ds = ds.enumerate().filter(
      lambda pos, _: _is_host_position(pos, global_batch_size,
                                       local_batch_size, process_index))
  if decode_with_position:
    first_position = tf.constant(start_step * global_batch_size, tf.int64)
    decode = lambda pos, record: decode_fn(record, pos + first_position)
  else:
    decode = lambda _, record: decode_fn(record)
  ds = _decode_to_batches(ds, decode, local_batch_size, decode_batched,
                          num_parallel_calls)
  ds = ds.map(_cast_outputs).prefetch(prefetch)
  return _with_options(ds)


def make_eval_dataset(records: tf.data.Dataset, num_records: int,
                      global_batch_size: int, decode_fn: DecodeFn, *,
                      process_index: int = 0, process_count: int = 1,
                      decode_batched: bool = False,
                      num_parallel_calls: int = tf.data.AUTOTUNE,
                      prefetch: int = 2) -> tf.data.Dataset:
  """Builds the one-pass, fixed-order, padded eval pipeline.

  Records keep their order; record ``i`` gets ``'index' = i``. The stream is
  padded to a multiple of ``global_batch_size`` with copies of the first
  record whose decoded features are zeroed, ``'index' = -1`` and
  ``'mask' = 0``; real examples have ``'mask' = 1``. Each host decodes only
  its slice of every global batch.

  A ``decode_fn`` may add a boolean ``'valid'`` entry: a record decoded with
  ``valid = False`` (an undecodable video) is treated like padding (zeroed,
  ``'mask' = 0``, ``'index' = -1``), so one bad file never ends the pass.

  Args:
    records: Finite dataset of per-example records with ``num_records``
      elements in a fixed order.
    num_records: Number of elements of ``records`` (>= 1).
    global_batch_size: Batch size summed over all hosts.
    decode_fn: As in :func:`make_train_dataset`.
    process_index: Index of this host.
    process_count: Number of hosts.
    decode_batched: Whether ``decode_fn`` takes a batch of records.
    num_parallel_calls: Parallelism of ``decode_fn``.
    prefetch: Number of batches to prefetch.

  Returns:
    A finite ``tf.data.Dataset`` of ``ceil(num_records / global_batch_size)``
    host-local batches.
  """
  local_batch_size = check_batch_args(global_batch_size, process_index,
                                      process_count)
  if num_records < 1:
    raise ValueError("the eval split is empty")
  num_padding = -num_records % global_batch_size

  real = records.enumerate().map(lambda i, r: (tf.cast(i, tf.int32), r))
  padding = tf.data.Dataset.zip(
      tf.data.Dataset.from_tensors(tf.constant(-1, tf.int32)),
      records.take(1)).repeat(num_padding)
  ds = real.concatenate(padding).enumerate().filter(
      lambda pos, _: _is_host_position(pos, global_batch_size,
                                       local_batch_size, process_index))
  ds = ds.map(lambda _, item: item)

  def decode_with_index(index, record):
    return {"features": decode_fn(record), "index": index}

  ds = _decode_to_batches(ds, decode_with_index, local_batch_size,
                          decode_batched, num_parallel_calls)

  def finalize(item):
    index = item["index"]
    valid = index >= 0
    features = dict(item["features"])
    if "valid" in features:
      valid = tf.logical_and(valid, tf.cast(features.pop("valid"), tf.bool))
      index = tf.where(valid, index, -1)

    def zero_padding(x):
      keep = tf.reshape(valid, [-1] + [1] * (x.shape.rank - 1))
      return tf.where(keep, x, tf.zeros_like(x))

    batch = tf.nest.map_structure(zero_padding, features)
    batch = _cast_outputs(batch)
    batch["index"] = index
    batch["mask"] = tf.cast(valid, tf.float32)
    return batch

  ds = ds.map(finalize).prefetch(prefetch)
  return _with_options(ds)


def as_numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a dataset of dict batches as dicts of numpy arrays."""
  return ds.as_numpy_iterator()
