"""DMVR-format TFRecords (see :mod:`.record_format`): sidecars and the ``tfrecord`` dataset.

The converter (``python -m vivit_knn.data.convert``) writes ``classes.txt`` (one
class name per line, in label order) and ``metadata.json`` beside the shards::

  {"format": "dmvr", "version": 1, "source": "ucf101", "split": 1,
   "short_side": 256, "class_names": [...],
   "splits": {"train": {"num_examples": 9537,
                        "shards": [{"file": "train.tfrecord-00000-of-00016",
                                    "num_examples": 597, "bytes": 123,
                                    "offsets": [0, ...]}, ...],
                        "skipped": {"corrupt": ["<video>", ...]}}}}

The dataset names its files by a glob or a ``name@N`` spec relative to
``data_dir`` and reads records by byte offset (:mod:`.records`), taken from
``metadata.json`` when it is up to date, else from one scan of the headers.
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

make_sequence_example = record_format.make_sequence_example
FILENAME_KEY = record_format.FILENAME_KEY

METADATA_FILE, CLASSES_FILE = record_format.METADATA_FILE, record_format.CLASSES_FILE
FORMAT = "dmvr"
VERSION = 1
LABEL_SOURCES = ("index", "verb_noun")


class _LazyFrames(Sequence):
  """The encoded frames of a parsed record; bytes are copied on access only."""

  def __init__(self, features):
    self._features = features

  def __len__(self) -> int:
    return len(self._features)

  def __getitem__(self, i):
    values = self._features[i].bytes_list.value
    return values[0] if values else b""


def _int_feature(example, key: str, source: str) -> int:
  values = example.context.feature[key].int64_list.value
  if not values:
    raise skips.BadVideoError(skips.CORRUPT, source, f"no {key}")
  return int(values[0])


def parse_sequence_example(raw: bytes, source: str,
                           num_nouns: int = 0) -> tuple[Sequence[bytes], int]:
  """``(lazy sequence of JPEG frames, label)`` of a serialized DMVR record.

  The label is ``clip/label/index``; with ``num_nouns`` it is the action ``verb *
  num_nouns + noun`` of ``clip/label/verb/index`` and ``clip/label/noun/index``.
  BadVideoError ``corrupt`` (unparsable or unlabelled) or ``zero_frames`` otherwise.
  """
  try:
    example = tf.train.SequenceExample.FromString(raw)
  except message.DecodeError as err:
    raise skips.BadVideoError(skips.CORRUPT, source, f"not a SequenceExample: {err}") from err
  if num_nouns:
    verb = _int_feature(example, record_format.label_set_keys("verb")[0], source)
    label = verb * num_nouns + _int_feature(
        example, record_format.label_set_keys("noun")[0], source)
  else:
    label = _int_feature(example, record_format.LABEL_KEY, source)
  frames = _LazyFrames(example.feature_lists.feature_list[record_format.FRAMES_KEY].feature)
  if not frames:
    raise skips.BadVideoError(skips.ZERO_FRAMES, source)
  return frames, label


def verb_noun_names(meta: dict | None, directory: str) -> list[str]:
  """The action names ``"<verb> <noun>"``; ValueError if the metadata lists no verbs and nouns."""
  sets = (meta or {}).get("label_sets", {})
  if not sets.get("verb") or not sets.get("noun"):
    raise ValueError(
        f"dataset.label_source='verb_noun' needs records with verb and noun labels, but "
        f"{os.path.join(directory, METADATA_FILE)} lists no verb and noun classes (convert "
        "EPIC-KITCHENS-100 with python -m vivit_knn.data.convert --format=ek100)")
  return [f"{verb} {noun}" for verb in sets["verb"] for noun in sets["noun"]]


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
  """Class names, one per line of ``path`` (blanks ignored); ValueError if none or repeated."""
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
  """``{path: offsets}`` of the files whose size the metadata records (others get scanned)."""
  if not meta:
    return {}
  recorded = {shard["file"]: shard for split in meta.get("splits", {}).values()
              for shard in split.get("shards", [])}
  out = {}
  for path in files:
    shard = recorded.get(os.path.basename(path))
    if shard and tf.io.gfile.stat(path).length == shard["bytes"]:
      out[path] = shard["offsets"]
  return out


def index_records(pattern: str, counter: skips.SkipCounter,
                  split: str) -> tuple[records.RecordIndex, dict | None]:
  """Indexes the records named by ``pattern``; also returns the metadata."""
  files = records.expand_files(pattern)
  meta = read_metadata(os.path.dirname(files[0]))
  known = shard_offsets(meta, files)
  index = records.RecordIndex(files, known, counter, split=split)
  scanned = len(files) - len(known)
  if scanned:
    logging.warning("%s split: counted %d records by scanning the headers of %d of %d files (no "
                    "up-to-date %s beside them)", split, len(index), scanned, len(files),
                    METADATA_FILE)
  else:
    logging.info("%s split: %d records in %d files", split, len(index), len(files))
  return index, meta


def class_names_for(num_classes: int, class_names_file: str, meta: dict | None, directory: str,
                    fallback_num_classes: int = 0) -> list[str]:
  """Class names from the file, the metadata or ``classes.txt``, in that order.

  Without any, ``class_<i>`` for ``num_classes`` (or ``fallback_num_classes``) classes.
  ValueError if nothing gives the classes, or ``num_classes`` disagrees.
  """
  classes_file = os.path.join(directory, CLASSES_FILE)
  if class_names_file:
    names = read_class_names(class_names_file)
  elif meta and meta.get("class_names"):
    names = list(meta["class_names"])
  elif tf.io.gfile.exists(classes_file):
    names = read_class_names(classes_file)
  else:
    num_classes = num_classes or fallback_num_classes
    if num_classes < 1:
      raise ValueError("dataset.num_classes is 0 and no class names were found: set "
                       "dataset.num_classes or dataset.class_names_file (or keep the "
                       f"converter's {METADATA_FILE} next to the shards)")
    return [f"class_{i}" for i in range(num_classes)]
  if num_classes and num_classes != len(names):
    raise ValueError(f"dataset.num_classes={num_classes} but {len(names)} class names were found")
  return names


def _check_count(field: str, expected: int, found: int) -> None:
  if expected and expected != found:
    logging.warning("dataset.%s=%d but %d records were found; using the records found",
                    field, expected, found)


def build_record_dataset(*, data_dir: str, train_pattern: str, eval_pattern: str,
                         spec: options.ProcessSpec, class_names_file: str = "",
                         num_classes: int = 0, num_train: int = 0, num_eval: int = 0,
                         fallback_num_classes: int = 0, expected_split: int | None = None,
                         label_source: str = "index") -> clips.ClipDataset:
  """A :class:`ClipDataset` over DMVR TFRecords (shared by named datasets).

  ``expected_split`` must match the split in the converter's metadata, if both
  are there. ``label_source='verb_noun'`` labels records with their action.
  """
  if label_source not in LABEL_SOURCES:
    raise ValueError(f"dataset.label_source must be one of {LABEL_SOURCES}, got {label_source!r}")
  clips.check_data_dir(data_dir)
  counter = skips.SkipCounter()
  train_index, meta = index_records(options.resolve_path(train_pattern, data_dir), counter, "train")
  eval_index, _ = index_records(options.resolve_path(eval_pattern, data_dir), counter, "eval")
  directory = os.path.dirname(train_index.files[0])
  if (expected_split is not None and meta and meta.get("split") and
      meta["split"] != expected_split):
    raise ValueError(f"dataset.split={expected_split} but the TFRecords in "
                     f"{directory} hold split {meta['split']}")
  _check_count("num_train", num_train, len(train_index))
  _check_count("num_eval", num_eval, len(eval_index))
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
    parse = functools.partial(parse_sequence_example, num_nouns=len(meta["label_sets"]["noun"]))
  else:
    names = class_names_for(num_classes, class_names_file, meta, directory, fallback_num_classes)
  return clips.ClipDataset(clips.RecordTable(train_index, parse),
                           clips.RecordTable(eval_index, parse), names, spec, counter)


def build(cfg: ml_collections.ConfigDict) -> clips.ClipDataset:
  """Builds the ``tfrecord`` dataset from its config (the keys of ``options.tfrecord_config()``)."""
  return build_record_dataset(
      data_dir=cfg.data_dir, train_pattern=cfg.train_pattern, eval_pattern=cfg.eval_pattern,
      spec=options.ProcessSpec.from_config(cfg), num_classes=cfg.num_classes,
      class_names_file=options.resolve_path(cfg.class_names_file, cfg.data_dir),
      num_train=cfg.num_train, num_eval=cfg.num_eval, label_source=cfg.label_source)
