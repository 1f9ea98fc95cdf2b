"""Dataset ``tfrecord``: DMVR-format TFRecords (Kinetics, SSv2, converted folders).

Files are named by a glob or a ``name@N`` sharded spec, relative to
``data_dir``. Records are read by byte offset (see
:mod:`vivit_knn.data.records`): offsets and counts come from the
converter's ``metadata.json`` when present, otherwise from one scan of the
record headers when the dataset is built.
"""

from __future__ import annotations

import os

import ml_collections
import tensorflow as tf
from absl import logging

from vivit_knn.data import clips, dmvr, metadata, options, records, skips
from vivit_knn.data.tables import RecordTable


def default_config() -> ml_collections.ConfigDict:
  """Default config of the ``tfrecord`` dataset."""
  return ml_collections.ConfigDict({
      "name": "tfrecord",
      # Patterns are relative to data_dir unless absolute.
      "data_dir": "",
      "train_pattern": "train.tfrecord*",
      "eval_pattern": "test.tfrecord*",
      # 0 = take classes from class_names_file, else from the converter's
      # metadata.json / classes.txt next to the shards.
      "num_classes": 0,
      "class_names_file": "",
      # Expected example counts (0 = whatever the files hold). A mismatch
      # is logged; the records found are used.
      "num_train": 0,
      "num_eval": 0,
      **options.processing_fields(),
  })


def check_data_dir(data_dir: str) -> None:
  """Raises FileNotFoundError naming ``dataset.data_dir`` if it is absent."""
  if data_dir and not tf.io.gfile.isdir(data_dir):
    raise FileNotFoundError(
        f"dataset.data_dir={data_dir} does not exist or is not a directory")


def index_records(pattern: str, counter: skips.SkipCounter,
                  split: str) -> tuple[records.RecordIndex, dict | None]:
  """Indexes the records named by ``pattern``; also returns the metadata."""
  files = records.expand_files(pattern)
  meta = metadata.read_metadata(os.path.dirname(files[0]))
  known = metadata.shard_offsets(meta, files)
  index = records.RecordIndex(files, known, counter)
  scanned = len(files) - len(known)
  if scanned:
    logging.warning(
        "%s split: counted %d records by scanning the headers of %d of %d "
        "files (no up-to-date %s beside them)", split, len(index), scanned,
        len(files), metadata.METADATA_FILE)
  else:
    logging.info("%s split: %d records in %d files", split, len(index),
                 len(files))
  return index, meta


def class_names_for(num_classes: int, class_names_file: str,
                    meta: dict | None, directory: str,
                    fallback_num_classes: int = 0) -> list[str]:
  """Class names from the file, the metadata or ``classes.txt``, in that order.

  Without any of them, generic names ``class_<i>`` for ``num_classes`` (or,
  if that is 0, ``fallback_num_classes``) classes.

  Raises:
    ValueError: if nothing gives the classes, or ``num_classes`` disagrees
      with the names found.
  """
  names = None
  if class_names_file:
    names = metadata.read_class_names(class_names_file)
  elif meta and meta.get("class_names"):
    names = list(meta["class_names"])
  elif tf.io.gfile.exists(os.path.join(directory, metadata.CLASSES_FILE)):
    names = metadata.read_class_names(
        os.path.join(directory, metadata.CLASSES_FILE))
  if names is None:
    num_classes = num_classes or fallback_num_classes
    if num_classes < 1:
      raise ValueError(
          "dataset.num_classes is 0 and no class names were found: set "
          "dataset.num_classes or dataset.class_names_file (or keep the "
          f"converter's {metadata.METADATA_FILE} next to the shards)")
    return [f"class_{i}" for i in range(num_classes)]
  if num_classes and num_classes != len(names):
    raise ValueError(
        f"dataset.num_classes={num_classes} but {len(names)} class names "
        "were found")
  return names


def _check_count(field: str, expected: int, found: int) -> None:
  if expected and expected != found:
    logging.warning("dataset.%s=%d but %d records were found; using the "
                    "records found", field, expected, found)


def build_record_dataset(*, data_dir: str, train_pattern: str,
                         eval_pattern: str, num_classes: int,
                         class_names_file: str, num_train: int, num_eval: int,
                         spec: options.ProcessSpec,
                         fallback_num_classes: int = 0,
                         expected_split: int | None = None,
                         ) -> clips.ClipDataset:
  """A :class:`ClipDataset` over DMVR TFRecords (shared by named datasets).

  ``expected_split``, if given, must match the split recorded in the
  converter's metadata (when there is one).
  """
  check_data_dir(data_dir)
  counter = skips.SkipCounter()
  train_index, meta = index_records(
      options.resolve_path(train_pattern, data_dir), counter, "train")
  eval_index, _ = index_records(
      options.resolve_path(eval_pattern, data_dir), counter, "eval")
  if (expected_split is not None and meta and meta.get("split") and
      meta["split"] != expected_split):
    raise ValueError(
        f"dataset.split={expected_split} but the TFRecords in "
        f"{os.path.dirname(train_index.files[0])} hold split {meta['split']}")
  _check_count("num_train", num_train, len(train_index))
  _check_count("num_eval", num_eval, len(eval_index))
  names = class_names_for(num_classes, class_names_file, meta,
                          os.path.dirname(train_index.files[0]),
                          fallback_num_classes)
  return clips.ClipDataset(
      RecordTable(train_index, dmvr.parse_sequence_example),
      RecordTable(eval_index, dmvr.parse_sequence_example), names, spec,
      counter)


def build(config: ml_collections.ConfigDict | None) -> clips.ClipDataset:
  """Builds the ``tfrecord`` dataset from a (possibly partial) config.

  Raises:
    ValueError: for unknown or invalid fields, naming ``dataset.<field>``.
    FileNotFoundError: naming a missing directory, pattern or shard.
  """
  cfg = options.resolve_config(config, default_config)
  return build_record_dataset(
      data_dir=cfg.data_dir, train_pattern=cfg.train_pattern,
      eval_pattern=cfg.eval_pattern, num_classes=cfg.num_classes,
      class_names_file=options.resolve_path(cfg.class_names_file,
                                            cfg.data_dir),
      num_train=cfg.num_train, num_eval=cfg.num_eval,
      spec=options.ProcessSpec.from_config(cfg))
