"""Writing DMVR TFRecord shards resumably, and their sidecar files.

A shard is written to a temporary file, its stats (record offsets, skipped
videos) to ``<out>/.shards/<shard>.json``, then it is renamed; a shard with both
is never written again. The sidecars (:mod:`vivit_knn.data.tfrecord`) come last.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence

from apache_beam.io.filesystems import FileSystems

from vivit_knn.data import record_format

# Files go through Beam's file systems (local disk, gs:// and the others Beam
# knows), so a worker on any runner writes the same way and imports no TensorFlow.

STATS_DIR = ".shards"
# The name of every shard this converter writes (see `shard_names`).
SHARD_NAME = re.compile(r"(train|test)\.tfrecord-\d{5}-of-\d{5}")


def _write(path: str, data: bytes) -> None:
  tmp = path + ".tmp"
  with FileSystems.create(tmp, mime_type="application/octet-stream") as f:
    f.write(data)
  FileSystems.rename([tmp], [path])


def shard_names(split: str, num_shards: int) -> list[str]:
  """``<split>.tfrecord-00000-of-0000N`` names (the ``name@N`` spelling)."""
  return [f"{split}.tfrecord-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]


def partition(num_items: int, num_shards: int) -> list[range]:
  """Contiguous, near-equal ranges of item numbers, one per shard."""
  bounds = [round(i * num_items / num_shards) for i in range(num_shards + 1)]
  return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _stats_path(out_dir: str, name: str) -> str:
  return os.path.join(out_dir, STATS_DIR, name + ".json")


def finished_stats(out_dir: str, name: str) -> dict | None:
  """Stats of shard ``name`` if it was completely written, else None."""
  path, stats_path = os.path.join(out_dir, name), _stats_path(out_dir, name)
  if not (FileSystems.exists(path) and FileSystems.exists(stats_path)):
    return None
  with FileSystems.open(stats_path, mime_type="application/json") as f:
    stats = json.loads(f.read().decode())
  if FileSystems.match([path])[0].metadata_list[0].size_in_bytes != stats["bytes"]:
    return None
  return stats


def write_shard(out_dir: str, name: str, results: Iterable[tuple]) -> dict:
  """Writes the records among ``results`` as shard ``name``; returns stats.

  A result is ``('ok', serialized record)`` or ``('skip', reason, detail)``.

  Stats: ``file``, ``num_examples``, ``bytes``, ``offsets`` and ``skipped``
  (``{reason: [detail, ...]}``). The shard is written to the stats folder,
  outside the shard namespace so a glob never picks up a partial shard, and
  renamed when complete, after its stats.
  """
  if not FileSystems.exists(os.path.join(out_dir, STATS_DIR)):
    FileSystems.mkdirs(os.path.join(out_dir, STATS_DIR))
  tmp = os.path.join(out_dir, STATS_DIR, name + ".tmp")
  offsets, skipped, offset = [], {}, 0
  with FileSystems.create(tmp, mime_type="application/octet-stream") as writer:
    for result in results:
      if result[0] == "skip":
        skipped.setdefault(result[1], []).append(result[2])
        continue
      framed = record_format.frame_record(result[1])
      writer.write(framed)
      offsets.append(offset)
      offset += len(framed)
  stats = {"file": name, "num_examples": len(offsets), "bytes": offset,
           "offsets": offsets, "skipped": skipped}
  write_json(_stats_path(out_dir, name), stats)
  FileSystems.rename([tmp], [os.path.join(out_dir, name)])
  return stats


def remove_stale_shards(out_dir: str, split: str, keep: Sequence[str]) -> None:
  """Deletes ``split`` shards not in ``keep`` (left by another shard count).

  Only files named as this converter names shards count; others are left alone.
  """
  matched = FileSystems.match([os.path.join(out_dir, f"{split}.tfrecord-*")])[0]
  stale = [m.path for m in matched.metadata_list
           if SHARD_NAME.fullmatch(os.path.basename(m.path))
           and os.path.basename(m.path) not in set(keep)]
  if stale:
    FileSystems.delete(stale)


def split_stats(out_dir: str, names: Sequence[str]) -> dict:
  """``{'num_examples', 'shards': [stats...], 'skipped': {reason: [...]}}`` of finished shards."""
  shards, skipped = [], {}
  for name in names:
    stats = finished_stats(out_dir, name)
    if stats is None:
      raise FileNotFoundError(f"shard {os.path.join(out_dir, name)} was not written")
    shards.append({k: stats[k] for k in ("file", "num_examples", "bytes", "offsets")})
    for reason, details in stats["skipped"].items():
      skipped.setdefault(reason, []).extend(details)
  return {"num_examples": sum(s["num_examples"] for s in shards),
          "shards": shards, "skipped": skipped}


def write_json(path: str, content: dict) -> None:
  """Writes ``content`` to ``path`` atomically (temporary file + rename)."""
  _write(path, json.dumps(content, indent=1).encode())


def write_sidecars(out_dir: str, meta: dict) -> None:
  """Writes ``classes.txt`` and ``metadata.json`` beside the shards."""
  _write(os.path.join(out_dir, record_format.CLASSES_FILE),
         "".join(f"{name}\n" for name in meta["class_names"]).encode())
  write_json(os.path.join(out_dir, record_format.METADATA_FILE), meta)
