"""Dataset ``tfds``: any TFDS video builder (``ucf101``, ...), random access.

Examples are read as serialized ``tf.train.Example`` records, so only the sampled
frames are decoded: ArrayRecord builds through ``as_data_source``, TFRecord builds
(TFDS's default) through the byte-offset index of their shards. TensorFlow
Datasets, slow to import, is imported only when such a dataset is built.
"""

from __future__ import annotations

import os

import ml_collections
import tensorflow as tf
from google.protobuf import message

from vivit_knn.data import clips, options, records, skips


class _Reader:
  """``size`` serialized examples: ``read(i)`` gives one, ``describe(i)`` its location."""

  def __init__(self, size: int, read, describe):
    self._size, self.read, self.describe = size, read, describe

  def __len__(self) -> int:
    return self._size


def _tfrecord_reader(builder, split: str, counter: skips.SkipCounter, role: str):
  """Reader over the TFRecord shards of ``split`` (honouring slices); damaged ones counted."""
  instructions = builder.info.splits[split].file_instructions
  paths = [options.resolve_path(os.fspath(ins.filename), builder.data_dir)
           for ins in instructions]
  files = list(dict.fromkeys(paths))
  index = records.RecordIndex(files, counter=counter, split=role)
  starts = dict(zip(files, index.file_starts()))
  positions = []
  for ins, path in zip(instructions, paths):
    first = starts[path] + ins.skip
    positions.extend(range(first, first + ins.take))
  return _Reader(len(positions), lambda i: index.read(positions[i]),
                 lambda i: index.describe(positions[i]))


def _not_prepared(builder, download: bool) -> FileNotFoundError:
  hint = "" if download else (
      f": run `tfds build {builder.name} --data_dir=<dir>` or set dataset.download=True (and "
      "dataset.manual_dir if it needs manually downloaded files)")
  return FileNotFoundError(
      f"TFDS dataset {builder.info.full_name} is not prepared in {builder.data_dir}{hint}")


def _reader(builder, split: str, counter: skips.SkipCounter, download: bool, role: str):
  """Random-access reader of ``split``, whatever the prepared file format."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    source = builder.as_data_source(
        split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    return _Reader(len(source), lambda i: source[i], lambda i: f"{builder.name}:{split}[{i}]")
  except Exception as err:
    if not builder.is_prepared():
      raise _not_prepared(builder, download) from None
    if isinstance(err, NotImplementedError):  # Not ArrayRecord: prepared as TFRecord.
      return _tfrecord_reader(builder, split, counter, role)
    raise


def example_parser(video_key: str, label_key: str):
  """Parser of TFDS-serialized examples: ``(encoded frames, label)``."""

  def parse(raw: bytes, source: str):
    try:
      features = tf.train.Example.FromString(raw).features.feature
    except message.DecodeError as err:
      raise skips.BadVideoError(skips.CORRUPT, source, str(err)) from err
    labels = features[label_key].int64_list.value
    if not labels:
      raise skips.BadVideoError(skips.CORRUPT, source, f"no {label_key!r}")
    frames = features[video_key].bytes_list.value
    if not frames:
      raise skips.BadVideoError(skips.ZERO_FRAMES, source)
    return frames, int(labels[0])

  return parse


def build_tfds_dataset(*, builder: str, data_dir: str, spec: options.ProcessSpec,
                       manual_dir: str = "", download: bool = False,
                       train_split: str = "train", eval_split: str = "test",
                       video_key: str = "video", label_key: str = "label") -> clips.ClipDataset:
  """A :class:`ClipDataset` over a TFDS video builder, prepared first if ``download``."""
  clips.check_data_dir(data_dir)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds_builder = tfds.builder(builder, data_dir=data_dir or None)
  if download:
    tfds_builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir or None))
  features = tfds_builder.info.features
  for field, key in (("video_key", video_key), ("label_key", label_key)):
    if key not in features:
      raise ValueError(f"dataset.{field}={key!r} is not a feature of {builder}"
                       f"; its features are {sorted(features.keys())}")
  label = features[label_key]
  if not hasattr(label, "names"):
    raise ValueError(f"dataset.label_key={label_key!r} of {builder} is not a ClassLabel")
  counter = skips.SkipCounter()
  parse = example_parser(video_key, label_key)
  train, eval_ = (clips.RecordTable(_reader(tfds_builder, split, counter, download, role), parse)
                  for split, role in ((train_split, "train"), (eval_split, "eval")))
  return clips.ClipDataset(train, eval_, label.names, spec, counter)


def build(cfg: ml_collections.ConfigDict) -> clips.ClipDataset:
  """Builds the ``tfds`` dataset from its config (every key of ``options.tfds_config()``)."""
  fields = ("builder", "data_dir", "manual_dir", "download", "train_split", "eval_split",
            "video_key", "label_key")
  return build_tfds_dataset(**{key: cfg[key] for key in fields},
                            spec=options.ProcessSpec.from_config(cfg))
