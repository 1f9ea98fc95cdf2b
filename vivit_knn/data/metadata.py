"""Sidecar files written next to converted TFRecord shards.

``classes.txt`` lists the class names, one per line, in label order.
``metadata.json`` records the class names, per-split example counts, each
shard's record offsets (so readers need not scan the files) and the videos
the converter skipped::

  {"format": "dmvr", "version": 1, "source": "ucf101", "split": 1,
   "short_side": 256, "class_names": [...],
   "splits": {"train": {"num_examples": 9537,
                        "shards": [{"file": "train.tfrecord-00000-of-00016",
                                    "num_examples": 597, "bytes": 123,
                                    "offsets": [0, ...]}, ...],
                        "skipped": {"corrupt": ["<video>", ...]}}}}
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

METADATA_FILE = "metadata.json"
CLASSES_FILE = "classes.txt"
FORMAT = "dmvr"
VERSION = 1


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


def write_json(path: str, content: dict) -> None:
  """Writes ``content`` to ``path`` atomically (temporary file + rename)."""
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(content, f, indent=1)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def write_class_names(directory: str, class_names) -> str:
  """Writes ``classes.txt``; returns its path."""
  path = os.path.join(directory, CLASSES_FILE)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("".join(f"{name}\n" for name in class_names))
  return path


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
