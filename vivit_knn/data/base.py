"""The dataset interface and the tf.data pipelines every source builds on (examples ``0..n-1``)."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf

# Records whose epochs follow the start epoch are produced by a counter; this
# bound is never reached in practice but keeps the stream formally finite.
_MAX_EPOCHS = 2**62
_PREFETCH = 2

DecodeFn = Callable[..., dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset; ``input_shape`` is ``(T, H, W, C)`` of one input clip."""

  num_classes: int
  class_names: tuple[str, ...]  # Indexed by label.
  num_train_examples: int
  num_eval_examples: int
  input_shape: tuple[int, int, int, int]

  def __post_init__(self):
    if len(self.class_names) != self.num_classes:
      raise ValueError(f"class_names has {len(self.class_names)} entries but num_classes is "
                       f"{self.num_classes}")


SPLITS = ("train", "eval")


def check_split(split: str) -> str:
  """Returns ``split`` if it is 'train' or 'eval'; ValueError naming both otherwise."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  return split


class VideoDataset(abc.ABC):
  """Interface consumed by the trainer: :attr:`info` and tf.data train / eval pipelines.

  A source gives the ``decode_fn`` of :func:`make_train_dataset` and :func:`make_eval_dataset`,
  called as the class attributes ``decode_batched`` and ``decode_with_position`` say.
  """

  decode_batched = False
  decode_with_position = False

  @property
  @abc.abstractmethod
  def info(self) -> DatasetInfo:
    """Static description of the dataset."""

  @abc.abstractmethod
  def _train_decode_fn(self, seed: int) -> DecodeFn:
    """The ``decode_fn`` of the train pipeline of a run seeded with ``seed``."""

  @abc.abstractmethod
  def _eval_decode_fn(self) -> DecodeFn:
    """The ``decode_fn`` of the eval pipeline."""

  def train_dataset(self, global_batch_size: int, *, start_step: int = 0, seed: int = 0,
                    process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    """The pipeline behind :meth:`train_batches`."""
    return make_train_dataset(
        self.info.num_train_examples, global_batch_size, self._train_decode_fn(seed),
        seed=seed, start_step=start_step, process_index=process_index,
        process_count=process_count, decode_batched=self.decode_batched,
        decode_with_position=self.decode_with_position)

  def eval_dataset(self, global_batch_size: int, *, process_index: int = 0,
                   process_count: int = 1) -> tf.data.Dataset:
    """The pipeline behind :meth:`eval_batches`."""
    return make_eval_dataset(self.info.num_eval_examples, global_batch_size,
                             self._eval_decode_fn(), process_index=process_index,
                             process_count=process_count, decode_batched=self.decode_batched)

  def train_batches(self, global_batch_size: int, *, start_step: int = 0, seed: int = 0,
                    process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """Infinite stream of this host's slice of each global train batch (:func:`make_train_dataset`).

    Each element is ``{'inputs': float32 [b, T, H, W, C], 'label': int32 [b]}``,
    ``b = global_batch_size // process_count``; ``start_step=s`` resumes at step ``s``.
    """
    return self.train_dataset(
        global_batch_size, start_step=start_step, seed=seed,
        process_index=process_index, process_count=process_count).as_numpy_iterator()

  def eval_batches(self, global_batch_size: int, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
    """One pass over the eval split in fixed order (:func:`make_eval_dataset`).

    Each element holds ``'inputs'`` (``[b, V, T, H, W, C]`` for ``V > 1`` views per
    video), ``'label'``, ``'mask'`` (float32, 0 for padding) and ``'index'`` (-1 for padding).
    """
    return self.eval_dataset(
        global_batch_size, process_index=process_index,
        process_count=process_count).as_numpy_iterator()

  def skipped_examples(self) -> dict[str, int]:
    """Distinct examples skipped so far in this process, by reason (``{}`` if none can be)."""
    return {}

  def split_counts(self, split: str) -> dict[str, int | None]:
    """``{'listed', 'readable', 'skipped'}`` videos of ``split`` ('train' or 'eval').

    ``listed`` includes the videos found bad while listing (absent files, damaged
    record tails), ``skipped`` counts the distinct ones skipped so far, ``readable``
    is ``listed - skipped`` once every listed video was read, None before. This
    default is for sources that cannot meet bad data.
    """
    train = check_split(split) == "train"
    listed = self.info.num_train_examples if train else self.info.num_eval_examples
    return {"listed": listed, "readable": None, "skipped": 0}

  def describe_example(self, split: str, index: int) -> str:
    """Where example ``index`` of ``split`` comes from (a file name when known)."""
    return f"{check_split(split)}:{int(index)}"

  def skipped_sources(self, split: str) -> list[str]:
    """One line per video of ``split`` skipped so far: its location and why."""
    check_split(split)
    return []


def check_batch_args(global_batch_size: int, process_index: int, process_count: int) -> int:
  """The per-host batch size; ValueError for host arguments or a batch size that do not fit."""
  if process_count < 1:
    raise ValueError(f"process_count must be >= 1, got {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size must be >= 1 and divisible by process_count="
                     f"{process_count}, got {global_batch_size}")
  return global_batch_size // process_count


def _host_batches(ds: tf.data.Dataset, decode_fn: DecodeFn, global_batch_size: int,
                  process_index: int, process_count: int, decode_batched: bool):
  """This host's slice of each global batch of ``ds`` (``decode_fn(position, element)``)."""
  local_batch_size = global_batch_size // process_count
  ds = ds.enumerate().filter(
      lambda pos, _: tf.equal((pos % global_batch_size) // local_batch_size, process_index))
  if decode_batched:
    ds = ds.batch(local_batch_size, drop_remainder=True)
  ds = ds.map(decode_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds if decode_batched else ds.batch(local_batch_size, drop_remainder=True)


def _cast_outputs(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Enforces the dtypes promised by the :class:`VideoDataset` contract."""
  return dict(batch, inputs=tf.cast(batch["inputs"], tf.float32),
              label=tf.cast(batch["label"], tf.int32))


def _finish(ds: tf.data.Dataset, finalize: Callable) -> tf.data.Dataset:
  """``ds`` mapped by ``finalize``, prefetched, its element order pinned against map timing."""
  options = tf.data.Options()
  options.deterministic = True
  return ds.map(finalize).prefetch(_PREFETCH).with_options(options)


def _shuffled_epoch(num_records: int, seed: int, epoch: tf.Tensor) -> tf.data.Dataset:
  """Example numbers ``0..num_records-1`` in an order seeded by ``(seed, epoch)``.

  Stateless, unlike ``Dataset.shuffle``: TensorFlow's global seed does not change it.
  """
  epoch_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
  return tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(
      tf.range(num_records, dtype=tf.int64), seed=epoch_seed))


def make_train_dataset(num_records: int, global_batch_size: int, decode_fn: DecodeFn, *,
                       seed: int = 0, start_step: int = 0, process_index: int = 0,
                       process_count: int = 1, decode_batched: bool = False,
                       decode_with_position: bool = False) -> tf.data.Dataset:
  """The infinite, deterministic, resumable, host-sliced train pipeline over examples ``0..n-1``.

  Epoch ``e`` visits the examples in a permutation seeded by ``(seed, e)``, keeps
  whole global batches, and this host keeps its contiguous
  ``global_batch_size // process_count`` slice of each. ``start_step`` skips
  whole epochs arithmetically and the rest on the example numbers, so skipped
  examples are never decoded; nor are other hosts'.

  ``decode_fn`` maps an int64 example number (a host-local batch of them if
  ``decode_batched``) to a dict with at least ``'inputs'`` and ``'label'``. With
  ``decode_with_position`` it also gets the example's int64 position in the
  uninterrupted global stream (``step * global_batch_size + slot``): unique per
  draw and the same after a resume, so it can seed augmentation.
  """
  check_batch_args(global_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  steps_per_epoch = num_records // global_batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"global_batch_size={global_batch_size} exceeds the number of train "
                     f"examples ({num_records})")
  records_per_epoch = steps_per_epoch * global_batch_size
  first_epoch, step_in_epoch = divmod(start_step, steps_per_epoch)

  def epoch_records(epoch):
    return _shuffled_epoch(num_records, seed, epoch).take(records_per_epoch)

  ds = epoch_records(tf.constant(first_epoch, tf.int64)).skip(step_in_epoch * global_batch_size)
  ds = ds.concatenate(tf.data.Dataset.range(first_epoch + 1, _MAX_EPOCHS).flat_map(epoch_records))
  # Every epoch (and the skipped prefix) is a whole number of global batches, so
  # the running position modulo the global batch size is the slot in the batch.
  if decode_with_position:
    first_position = tf.constant(start_step * global_batch_size, tf.int64)
    decode = lambda pos, record: decode_fn(record, pos + first_position)
  else:
    decode = lambda _, record: decode_fn(record)
  ds = _host_batches(ds, decode, global_batch_size, process_index, process_count, decode_batched)
  return _finish(ds, _cast_outputs)


def make_eval_dataset(num_records: int, global_batch_size: int, decode_fn: DecodeFn, *,
                      process_index: int = 0, process_count: int = 1,
                      decode_batched: bool = False) -> tf.data.Dataset:
  """The ``ceil(n / global_batch_size)`` host-local batches of examples ``0..n-1``, in order.

  Example ``i`` gets ``'index' = i`` and ``'mask' = 1``. Zeroed copies of example
  0 (``'index' = -1``, ``'mask' = 0``) pad the last global batch; an example
  ``decode_fn`` marks ``'valid' = False`` (an undecodable video) becomes such
  padding. Each host decodes only its slice; arguments as in :func:`make_train_dataset`.
  """
  check_batch_args(global_batch_size, process_index, process_count)
  if num_records < 1:
    raise ValueError("the eval split is empty")
  num_padding = -num_records % global_batch_size

  records = tf.data.Dataset.range(num_records)
  real = records.enumerate().map(lambda i, r: (tf.cast(i, tf.int32), r))
  padding = tf.data.Dataset.zip(tf.data.Dataset.from_tensors(tf.constant(-1, tf.int32)),
                                records.take(1)).repeat(num_padding)
  ds = _host_batches(real.concatenate(padding),
                     lambda _, item: {"features": decode_fn(item[1]), "index": item[0]},
                     global_batch_size, process_index, process_count, decode_batched)

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

    batch = _cast_outputs(tf.nest.map_structure(zero_padding, features))
    batch["index"] = index
    batch["mask"] = tf.cast(valid, tf.float32)
    return batch

  return _finish(ds, finalize)
