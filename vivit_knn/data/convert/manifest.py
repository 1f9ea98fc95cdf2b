"""The record of what an output folder was converted from: ``<out>/conversion.json``.

Written before the first shard: every option that shapes the shards and a hash
of the sources. A rerun resumes only when both match, else it stops naming each
difference unless ``--overwrite``, which first removes only the converter's own
outputs (shards, ``.shards`` stats, ``classes.txt``, ``metadata.json``,
``conversion.json``) and only where its ``conversion.json`` or ``metadata.json``
says it wrote them. Shards with no record, or files merely named like the
outputs, are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping

import tensorflow as tf

from vivit_knn.data import tfrecord
from vivit_knn.data.convert import shards
from vivit_knn.data.convert.listing import SPLITS, Listing

MANIFEST_FILE = "conversion.json"


def options(fmt: str, root: str, *, annotations: str, split: int, eval_fraction: float,
            num_shards: int, short_side: int, jpeg_quality: int, seed: int) -> dict:
  """The conversion's options as recorded (flag name -> value), in the order differences are named.

  Options the format does not use are None; local folders are absolute paths.
  The runner and workers are left out: they do not change the records.
  """
  def folder(path):
    return path if not path or "://" in path else os.path.abspath(path)
  return {"format": fmt, "root": folder(root), "annotations": folder(annotations),
          "split": split if fmt in ("ucf101", "hmdb51") else None,
          "eval_fraction": eval_fraction if fmt == "folder" else None, "num_shards": num_shards,
          "short_side": short_side, "jpeg_quality": jpeg_quality, "seed": seed}


def _file_state(path: str) -> list:
  """``[size, modification time]`` of a local file (remote files: ``[]``)."""
  if "://" in path:
    return []
  stat = os.stat(path)
  return [stat.st_size, stat.st_mtime_ns]


def _relative(path: str, root: str) -> str:
  return path if "://" in path else os.path.relpath(path, root)


def source_record(listing: Listing, root: str) -> dict:
  """``{'sha256', 'videos': {split: count}}`` of the listed examples and their files.

  The hash covers each example's file (path relative to ``root``, size,
  modification time), segment, labels and name, the class names and the missing files.
  """
  record = {"class_names": list(listing.class_names), "label_sets": listing.label_sets}
  for split in SPLITS:
    record[split] = list(
        [_relative(e.path, root), *_file_state(e.path), e.start_s, e.end_s, e.label,
         e.label_text, e.name, [list(s) for s in e.label_sets]]
        for e in listing.splits.get(split, []))
    record[split].sort(key=json.dumps)
  record["missing"] = sorted(_relative(p, root) for split in SPLITS
                             for p in listing.missing.get(split, []))
  digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
  return {"sha256": digest,
          "videos": {split: len(listing.splits.get(split, [])) for split in SPLITS}}


def manifest(option_values: Mapping[str, object], sources: Mapping[str, object]) -> dict:
  """The content of ``conversion.json``."""
  return {"record_format": tfrecord.FORMAT, "record_version": tfrecord.VERSION,
          "options": dict(option_values), "sources": dict(sources)}


def differences(recorded: Mapping, current: Mapping) -> list[str]:
  """One phrase per difference between two manifests, recorded value first."""
  out = []
  old_options, new_options = recorded.get("options", {}), current["options"]
  for name in new_options:
    old, new = old_options.get(name), new_options.get(name)
    if old != new:
      out.append(f"--{name}={_show(old)} (now {_show(new)})")
  for name in ("record_format", "record_version"):
    if recorded.get(name) != current[name]:
      out.append(f"{name} {recorded.get(name)} (now {current[name]})")
  old_sources, new_sources = recorded.get("sources", {}), current["sources"]
  if old_sources.get("sha256") != new_sources["sha256"]:
    counts = " ".join(
        f"{split} {old_sources.get('videos', {}).get(split, '?')}"
        f"->{new_sources['videos'][split]}" for split in ("train", "test"))
    out.append(f"the source videos (files, sizes, dates or split lists changed; videos: {counts})")
  return out


def _show(value: object) -> str:
  return "<unset>" if value is None else ("''" if value == "" else str(value))


def _json_object(path: str) -> dict | None:
  """The JSON object in ``path``; None when it is absent, unreadable or not an object."""
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      content = json.load(f)
  except (ValueError, tf.errors.OpError):
    return None
  return content if isinstance(content, dict) else None


def read(out_dir: str) -> dict | None:
  """The manifest in ``out_dir``; None when there is none of this converter's."""
  recorded = _json_object(os.path.join(out_dir, MANIFEST_FILE))
  if recorded is None or recorded.get("record_format") != tfrecord.FORMAT:
    return None
  return recorded if isinstance(recorded.get("options"), dict) else None


def is_own(out_dir: str) -> bool:
  """Whether ``out_dir`` holds this converter's ``conversion.json`` or ``metadata.json``."""
  if read(out_dir) is not None:
    return True
  meta = _json_object(os.path.join(out_dir, tfrecord.METADATA_FILE))
  return (meta is not None and meta.get("format") == tfrecord.FORMAT
          and isinstance(meta.get("source"), str) and isinstance(meta.get("splits"), dict))


# The files of a conversion besides its shards, and what `shards.write_json` leaves of
# them when interrupted.
_SIDECARS = (tfrecord.METADATA_FILE, tfrecord.CLASSES_FILE, MANIFEST_FILE)
_SIDECAR_TMP = tuple(name + ".tmp" for name in (tfrecord.METADATA_FILE, MANIFEST_FILE))
# What `shards.write_shard` puts in the stats folder.
_STATS_NAME = re.compile(shards.SHARD_NAME.pattern + r"\.(json|tmp|json\.tmp)")


def previous_outputs(out_dir: str) -> list[str]:
  """The files and folders in ``out_dir`` named as this converter names its outputs."""
  if not tf.io.gfile.isdir(out_dir):
    return []
  names = [name.rstrip("/") for name in tf.io.gfile.listdir(out_dir)]
  found = sorted(n for n in names if shards.SHARD_NAME.fullmatch(n))
  found += [n for n in _SIDECARS + _SIDECAR_TMP + (shards.STATS_DIR,) if n in names]
  return [os.path.join(out_dir, n) for n in found]


def remove_previous(out_dir: str) -> None:
  """Deletes an earlier conversion's shards, stats and sidecars; nothing else.

  A stats folder that still holds other files stays.
  """
  for path in previous_outputs(out_dir):
    if not tf.io.gfile.isdir(path):
      tf.io.gfile.remove(path)
      continue
    for name in tf.io.gfile.listdir(path):
      if _STATS_NAME.fullmatch(name):
        tf.io.gfile.remove(os.path.join(path, name))
    if not tf.io.gfile.listdir(path):
      tf.io.gfile.rmtree(path)


def prepare(out_dir: str, current: Mapping, overwrite: bool) -> bool:
  """Checks ``out_dir`` against manifest ``current`` and records it; True when resuming.

  ``overwrite`` removes an earlier conversion in ``out_dir`` instead of refusing it. Without
  it, ValueError for a conversion with other options or sources (each difference named), or
  shards without a record; with or without it, for files named like the converter's outputs
  that it did not write.
  """
  previous = previous_outputs(out_dir)
  if previous and not is_own(out_dir):
    raise ValueError(
        f"--out={out_dir} holds files this converter did not write (e.g. "
        f"{os.path.basename(previous[0])}) and no {MANIFEST_FILE} or {tfrecord.METADATA_FILE} "
        "of its own; refusing to replace them: choose another --out, or move those files "
        "away first")
  recorded = read(out_dir) if not overwrite else None
  changed = differences(recorded, current) if recorded is not None else []
  if changed:
    raise ValueError(
        f"--out={out_dir} holds a conversion with other settings: {'; '.join(changed)}; "
        "pass --overwrite to replace it, or choose another --out")
  if recorded is None and previous and not overwrite:
    raise ValueError(
        f"--out={out_dir} holds shards but no {MANIFEST_FILE} (written by an older converter), "
        "so they cannot be checked against these options; pass --overwrite to replace them, "
        "or choose another --out")
  if overwrite and previous:
    remove_previous(out_dir)
  tf.io.gfile.makedirs(out_dir)
  shards.write_json(os.path.join(out_dir, MANIFEST_FILE), dict(current))
  return recorded is not None
