"""Writing DMVR TFRecord shards resumably, and their sidecar files.

A shard is written to a temporary file and renamed when complete; its stats
(record offsets, skipped videos) go to ``<out>/.shards/<shard>.json`` just
before the rename. A shard whose final file and stats both exist is never
written again, so an interrupted conversion resumes where it stopped. The
sidecar files (``classes.txt``, ``metadata.json``; see
:mod:`vivit_knn.data.tfrecord`) are written last.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence

import tensorflow as tf

from vivit_knn.data import records, tfrecord

STATS_DIR = ".shards"


# The name of every shard this converter writes (see `shard_names`).
SHARD_NAME = re.compile(r"(train|test)\.tfrecord-\d{5}-of-\d{5}")


def shard_names(split: str, num_shards: int) -> list[str]:
  """``<split>.tfrecord-00000-of-0000N`` names (the ``name@N`` spelling)."""
  return [f"{split}.tfrecord-{i:05d}-of-{num_shards:05d}"
          for i in range(num_shards)]


def partition(num_items: int, num_shards: int) -> list[range]:
  """Contiguous, near-equal ranges of item numbers, one per shard."""
  bounds = [round(i * num_items / num_shards) for i in range(num_shards + 1)]
  return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _stats_path(out_dir: str, name: str) -> str:
  return os.path.join(out_dir, STATS_DIR, name + ".json")


def finished_stats(out_dir: str, name: str) -> dict | None:
  """Stats of shard ``name`` if it was completely written, else None."""
  path, stats_path = os.path.join(out_dir, name), _stats_path(out_dir, name)
  if not (tf.io.gfile.exists(path) and tf.io.gfile.exists(stats_path)):
    return None
  with tf.io.gfile.GFile(stats_path) as f:
    stats = json.load(f)
  if tf.io.gfile.stat(path).length != stats["bytes"]:
    return None
  return stats


# One converted item: ('ok', serialized record) or ('skip', reason, detail).
Result = tuple


def write_shard(out_dir: str, name: str, results: Iterable[Result]) -> dict:
  """Writes the records among ``results`` as shard ``name``; returns stats.

  Stats: ``file``, ``num_examples``, ``bytes``, ``offsets`` and ``skipped``
  (``{reason: [detail, ...]}``).
  """
  tf.io.gfile.makedirs(os.path.join(out_dir, STATS_DIR))
  path = os.path.join(out_dir, name)
  # Outside the shard namespace, so a glob never picks up a partial shard.
  tmp = os.path.join(out_dir, STATS_DIR, name + ".tmp")
  offsets, skipped, offset = [], {}, 0
  with tf.io.TFRecordWriter(tmp) as writer:
    for result in results:
      if result[0] == "skip":
        skipped.setdefault(result[1], []).append(result[2])
        continue
      writer.write(result[1])
      offsets.append(offset)
      offset += records.record_size(len(result[1]))
  stats = {"file": name, "num_examples": len(offsets), "bytes": offset,
           "offsets": offsets, "skipped": skipped}
  write_json(_stats_path(out_dir, name), stats)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return stats


def remove_stale_shards(out_dir: str, split: str, keep: Sequence[str]) -> list:
  """Deletes ``split`` shards not in ``keep`` (left by another shard count).

  Only files named as this converter names shards count; others are left alone.
  """
  stale = [p for p in tf.io.gfile.glob(os.path.join(out_dir, f"{split}.tfrecord-*"))
           if SHARD_NAME.fullmatch(os.path.basename(p)) and os.path.basename(p) not in set(keep)]
  for path in stale:
    tf.io.gfile.remove(path)
  return stale


def write_split(out_dir: str, split: str, num_items: int, num_shards: int,
                convert: Callable[[Sequence[int]], Iterable[Result]],
                on_item: Callable[[int], None] = lambda n: None,
                on_resumed: Callable[[int], None] | None = None) -> dict:
  """Writes ``num_items`` items as ``num_shards`` shards of ``split``.

  Args:
    out_dir: Output folder.
    split: Split name, the shard name prefix.
    num_items: Number of items; shard ``k`` gets a contiguous range.
    num_shards: Number of shards (at most ``num_items``, at least 1).
    convert: Maps the item numbers of one shard to their results, in order.
    on_item: Called with the number of items done (progress).
    on_resumed: Called with the item count of each shard kept from an earlier
      run (default: ``on_item``).

  Returns:
    ``{'num_examples', 'shards': [stats...], 'skipped': {reason: [...]}}``.
  """
  num_shards = max(1, min(num_shards, num_items))
  names = shard_names(split, num_shards)
  remove_stale_shards(out_dir, split, names)
  shards, skipped = [], {}
  for name, items in zip(names, partition(num_items, num_shards)):
    stats = finished_stats(out_dir, name)
    if stats is None:
      stats = write_shard(out_dir, name, _counting(convert(items), on_item))
    else:
      (on_resumed or on_item)(len(items))
    shards.append({k: stats[k] for k in ("file", "num_examples", "bytes",
                                         "offsets")})
    for reason, details in stats["skipped"].items():
      skipped.setdefault(reason, []).extend(details)
  return {"num_examples": sum(s["num_examples"] for s in shards),
          "shards": shards, "skipped": skipped}


def _counting(results: Iterable[Result], on_item) -> Iterable[Result]:
  for result in results:
    on_item(1)
    yield result


def write_json(path: str, content: dict) -> None:
  """Writes ``content`` to ``path`` atomically (temporary file + rename)."""
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(content, f, indent=1)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def write_class_names(directory: str, class_names) -> str:
  """Writes ``classes.txt``; returns its path."""
  path = os.path.join(directory, tfrecord.CLASSES_FILE)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("".join(f"{name}\n" for name in class_names))
  return path


def write_sidecars(out_dir: str, meta: dict) -> None:
  """Writes ``classes.txt`` and ``metadata.json`` beside the shards."""
  write_class_names(out_dir, meta["class_names"])
  write_json(os.path.join(out_dir, tfrecord.METADATA_FILE), meta)
