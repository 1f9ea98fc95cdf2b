"""DMVR-format TFRecords: the record, its sidecars, the ``tfrecord`` dataset.

A record is a ``tf.train.SequenceExample`` (the DMVR/scenic video record; see
:mod:`vivit_knn.data.record_format`).

Shards written by the converter (``python -m vivit_knn.data.convert``) have two
sidecar files. ``classes.txt`` lists the class names, one per line, in label
order. ``metadata.json`` records the class names, per-split example counts,
each shard's record offsets (so readers need not scan the files) and the
videos the converter skipped::

  {"format": "dmvr", "version": 1, "source": "ucf101", "split": 1,
   "short_side": 256, "class_names": [...],
   "splits": {"train": {"num_examples": 9537,
                        "shards": [{"file": "train.tfrecord-00000-of-00016",
                                    "num_examples": 597, "bytes": 123,
                                    "offsets": [0, ...]}, ...],
                        "skipped": {"corrupt": ["<video>", ...]}}}}

The dataset names its files by a glob or a ``name@N`` sharded spec, relative
to ``data_dir``. Records are read by byte offset (see
:mod:`vivit_knn.data.records`): offsets and counts come from
``metadata.json`` when present, otherwise from one scan of the record headers
when the dataset is built.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

import ml_collections
import tensorflow as tf
from absl import logging
from google.protobuf import message

from vivit_knn.data import clips, options, record_format, records, skips

# The record is built by `record_format` (without TensorFlow, for the converter).
make_sequence_example = record_format.make_sequence_example
FRAMES_KEY, LABEL_KEY = record_format.FRAMES_KEY, record_format.LABEL_KEY
FILENAME_KEY = record_format.FILENAME_KEY

METADATA_FILE, CLASSES_FILE = record_format.METADATA_FILE, record_format.CLASSES_FILE
FORMAT = "dmvr"
VERSION = 1


# The record.


class _LazyFrames(Sequence):
  """The encoded frames of a parsed record; bytes are copied on access only."""

  def __init__(self, features):
    self._features = features

  def __len__(self) -> int:
    return len(self._features)

  def __getitem__(self, i):
    values = self._features[i].bytes_list.value
    return values[0] if values else b""


LABEL_SOURCES = ("index", "verb_noun")


def _int_feature(example, key: str, source: str) -> int:
  values = example.context.feature[key].int64_list.value
  if not values:
    raise skips.BadVideoError(skips.CORRUPT, source, f"no {key}")
  return int(values[0])


def parse_sequence_example(raw: bytes, source: str,
                           num_nouns: int = 0) -> tuple[Sequence[bytes], int]:
  """``(JPEG frames, label)`` of a serialized DMVR record.

  The frames are a lazy sequence, so picking a few of a long video copies
  only those. The label is ``clip/label/index``; with ``num_nouns`` it is the
  action ``verb * num_nouns + noun`` of the record's ``clip/label/verb/index``
  and ``clip/label/noun/index`` (EPIC-KITCHENS records).

  Raises:
    BadVideoError: ``corrupt`` for an unparsable record or one without its
      label(s), ``zero_frames`` for one without frames.
  """
  try:
    example = tf.train.SequenceExample.FromString(raw)
  except message.DecodeError as err:
    raise skips.BadVideoError(skips.CORRUPT, source,
                              f"not a SequenceExample: {err}") from err
  if num_nouns:
    verb = _int_feature(example, record_format.label_set_keys("verb")[0], source)
    label = verb * num_nouns + _int_feature(
        example, record_format.label_set_keys("noun")[0], source)
  else:
    label = _int_feature(example, LABEL_KEY, source)
  frames = _LazyFrames(
      example.feature_lists.feature_list[FRAMES_KEY].feature)
  if not frames:
    raise skips.BadVideoError(skips.ZERO_FRAMES, source)
  return frames, label


def verb_noun_names(meta: dict | None, directory: str) -> list[str]:
  """The action names ``"<verb> <noun>"`` of records carrying verbs and nouns.

  Raises:
    ValueError: naming ``dataset.label_source`` when the converter's metadata
      beside the records lists no verb and noun classes.
  """
  sets = (meta or {}).get("label_sets", {})
  if not sets.get("verb") or not sets.get("noun"):
    raise ValueError(
        f"dataset.label_source='verb_noun' needs records with verb and noun labels, but "
        f"{os.path.join(directory, METADATA_FILE)} lists no verb and noun classes (convert "
        "EPIC-KITCHENS-100 with python -m vivit_knn.data.convert --format=ek100)")
  return [f"{verb} {noun}" for verb in sets["verb"] for noun in sets["noun"]]


# The sidecar files.


def read_metadata(directory: str) -> dict | None:
  """The metadata in ``directory``, or None if there is none."""
  path = os.path.join(directory, METADATA_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, "r") as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path} is not {FORMAT} shard metadata")
  return meta


def read_class_names(path: str) -> list[str]:
  """Class names from a file with one name per line (blank lines ignored).

  Raises:
    FileNotFoundError: naming ``path`` if it does not exist.
    ValueError: if it names no class or a class twice.
  """
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"class names file {path} does not exist")
  with tf.io.gfile.GFile(path, "r") as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    raise ValueError(f"class names file {path} lists no class")
  if len(set(names)) != len(names):
    raise ValueError(f"class names file {path} lists a class twice")
  return names


def shard_offsets(meta: dict | None, files: list[str]) -> dict[str, list]:
  """``{path: offsets}`` for the files the metadata describes unchanged.

  A shard whose size differs from the recorded one is left out, so it gets
  scanned instead of read at stale offsets.
  """
  if not meta:
    return {}
  recorded = {}
  for split in meta.get("splits", {}).values():
    for shard in split.get("shards", []):
      recorded[shard["file"]] = shard
  out = {}
  for path in files:
    shard = recorded.get(os.path.basename(path))
    if shard and tf.io.gfile.stat(path).length == shard["bytes"]:
      out[path] = shard["offsets"]
  return out


# The dataset.


def check_data_dir(data_dir: str) -> None:
  """Raises FileNotFoundError naming ``dataset.data_dir`` if it is absent."""
  if data_dir and not tf.io.gfile.isdir(data_dir):
    raise FileNotFoundError(
        f"dataset.data_dir={data_dir} does not exist or is not a directory")


def index_records(pattern: str, counter: skips.SkipCounter,
                  split: str) -> tuple[records.RecordIndex, dict | None]:
  """Indexes the records named by ``pattern``; also returns the metadata."""
  files = records.expand_files(pattern)
  meta = read_metadata(os.path.dirname(files[0]))
  known = shard_offsets(meta, files)
  index = records.RecordIndex(files, known, counter, split=split)
  scanned = len(files) - len(known)
  if scanned:
    logging.warning(
        "%s split: counted %d records by scanning the headers of %d of %d "
        "files (no up-to-date %s beside them)", split, len(index), scanned,
        len(files), METADATA_FILE)
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
    names = read_class_names(class_names_file)
  elif meta and meta.get("class_names"):
    names = list(meta["class_names"])
  elif tf.io.gfile.exists(os.path.join(directory, CLASSES_FILE)):
    names = read_class_names(
        os.path.join(directory, CLASSES_FILE))
  if names is None:
    num_classes = num_classes or fallback_num_classes
    if num_classes < 1:
      raise ValueError(
          "dataset.num_classes is 0 and no class names were found: set "
          "dataset.num_classes or dataset.class_names_file (or keep the "
          f"converter's {METADATA_FILE} next to the shards)")
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
                         label_source: str = "index",
                         ) -> clips.ClipDataset:
  """A :class:`ClipDataset` over DMVR TFRecords (shared by named datasets).

  ``expected_split``, if given, must match the split recorded in the
  converter's metadata (when there is one). ``label_source='verb_noun'``
  labels each record with its action (see :func:`parse_sequence_example`).
  """
  if label_source not in LABEL_SOURCES:
    raise ValueError(f"dataset.label_source must be one of {LABEL_SOURCES}, got "
                     f"{label_source!r}")
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
  directory = os.path.dirname(train_index.files[0])
  parse = parse_sequence_example
  if label_source == "verb_noun":
    if class_names_file:
      raise ValueError("dataset.class_names_file cannot take effect with "
                       "dataset.label_source='verb_noun' (the actions are the records' verb "
                       "and noun classes); leave it empty")
    names = verb_noun_names(meta, directory)
    if num_classes and num_classes != len(names):
      raise ValueError(f"dataset.num_classes={num_classes} but the records hold "
                       f"{len(meta['label_sets']['verb'])} verbs x "
                       f"{len(meta['label_sets']['noun'])} nouns = {len(names)} actions")
    parse = functools.partial(parse_sequence_example,
                              num_nouns=len(meta["label_sets"]["noun"]))
  else:
    names = class_names_for(num_classes, class_names_file, meta, directory,
                            fallback_num_classes)
  return clips.ClipDataset(
      clips.RecordTable(train_index, parse),
      clips.RecordTable(eval_index, parse), names, spec,
      counter)


def build(cfg: ml_collections.ConfigDict) -> clips.ClipDataset:
  """Builds the ``tfrecord`` dataset from its config (every key of ``options.tfrecord_config()``).

  Raises:
    ValueError: for an invalid processing field, naming ``dataset.<field>``.
    FileNotFoundError: naming a missing directory, pattern or shard.
  """
  return build_record_dataset(
      data_dir=cfg.data_dir, train_pattern=cfg.train_pattern,
      eval_pattern=cfg.eval_pattern, num_classes=cfg.num_classes,
      class_names_file=options.resolve_path(cfg.class_names_file,
                                            cfg.data_dir),
      num_train=cfg.num_train, num_eval=cfg.num_eval,
      spec=options.ProcessSpec.from_config(cfg), label_source=cfg.label_source)
