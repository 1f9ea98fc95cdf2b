"""Kinetics-400/600/700 as published: the DeepMind CSV files and the videos.

``annotations`` is one CSV file, split by its ``split`` column (``train``;
``val``/``validate``/``validation`` -> test; ``test`` rows, unlabelled, left
out), or a folder of ``train.csv`` and ``validate.csv`` (or ``val.csv``,
``validation.csv``), optionally prefixed (``kinetics_400_train.csv``); a test
CSV is not converted. Columns are found by header name: ``label``,
``youtube_id``, ``time_start``, ``time_end`` (and ``split`` in a single file).
Class ``i`` is the ``i``-th train label in sorted order, as published
checkpoints use.

Videos are found anywhere under ``root`` (the first in sorted walk order when
names repeat): a trimmed ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` is used
whole, else an untrimmed ``<youtube_id>.<ext>`` is cut to ``[time_start,
time_end]``, else the row is missing, listed as ``<root>/<clip id>.mp4``.
Missing videos (YouTube takedowns) are counted and listed, never an error.
"""

from __future__ import annotations

import math
import os
import re

from vivit_knn.data.convert import files as fs
from vivit_knn.data.convert.listing import SPLITS, Example, Listing

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
# Role of each CSV in a folder, by the end of its name (after an optional prefix).
_ROLES = {"train": "train", "validate": "validation", "val": "validation",
          "validation": "validation", "test": "test"}
# ``split`` column values of a single CSV file -> converted split (None: left out).
_SPLIT_VALUES = {"train": "train", "val": "test", "validate": "test",
                 "validation": "test", "test": None}
_REQUIRED = ("label", "youtube_id", "time_start", "time_end")


def clip_id(youtube_id: str, start: float, end: float) -> str:
  """``<youtube_id>_<start:06d>_<end:06d>``, the published clip name (seconds truncated)."""
  return f"{youtube_id}_{int(start):06d}_{int(end):06d}"


def _role(filename: str) -> str | None:
  """``'train'``, ``'validation'``, ``'test'`` or None for a CSV file name."""
  stem, ext = os.path.splitext(filename)
  if ext.lower() != ".csv":
    return None
  stem = stem.lower()
  for name, role in _ROLES.items():
    if stem == name or re.search(rf"[_\-. ]{name}$", stem):
      return role
  return None


def _seconds(value: str, column: str, where: str) -> float:
  try:
    seconds = float(value)
  except ValueError:
    raise ValueError(f"{where}: {column} must be a number of seconds, got {value!r}") from None
  if not math.isfinite(seconds) or seconds < 0:
    raise ValueError(f"{where}: {column} must be a finite number >= 0, got {value!r}")
  return seconds


def _index_videos(root: str) -> dict[str, str]:
  """``{file name without extension: path}`` of the videos under ``root``."""
  index: dict[str, str] = {}
  for folder, dirs, files in fs.walk(root):
    dirs.sort()
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower() in VIDEO_EXTENSIONS and stem not in index:
        index[stem] = os.path.join(folder, name)
  return index


def _csv_files(annotations: str) -> tuple[dict[str, str], list[str]]:
  """``{role: csv path}`` of a folder, and notes on the files left out."""
  found: dict[str, list[str]] = {}
  for name in sorted(fs.listdir(annotations)):
    path = os.path.join(annotations, name)
    role = _role(name)
    if role and fs.isfile(path):
      found.setdefault(role, []).append(path)
  for role, paths in found.items():
    if len(paths) > 1:
      raise ValueError(f"{annotations}: more than one {role} CSV: "
                       f"{', '.join(os.path.basename(p) for p in paths)}")
  if "train" not in found:
    raise FileNotFoundError(
        f"Kinetics train CSV (train.csv or <prefix>_train.csv) not found in {annotations}")
  if "validation" not in found:
    raise FileNotFoundError(f"Kinetics validation CSV (validate.csv, val.csv or validation.csv, "
                            f"optionally with a prefix) not found in {annotations}")
  notes = [f"{path}: test rows have no labels; not converted" for path in found.get("test", [])]
  return {role: paths[0] for role, paths in found.items()}, notes


def _rows_by_split(annotations: str):
  """``{split: [(file, line, row)]}`` and notes, from a file or a folder."""
  rows: dict[str, list[tuple[str, int, dict[str, str]]]] = {split: [] for split in SPLITS}
  if fs.isdir(annotations):
    files, notes = _csv_files(annotations)
    for role, split in (("train", "train"), ("validation", "test")):
      path = files[role]
      rows[split] = [(path, number, row) for number, row in fs.csv_rows(path, _REQUIRED)]
    return rows, notes
  if not fs.isfile(annotations):
    raise FileNotFoundError(f"Kinetics annotations {annotations} do not exist")
  left_out = 0
  for number, row in fs.csv_rows(annotations, _REQUIRED + ("split",)):
    value = row["split"].lower()
    if value not in _SPLIT_VALUES:
      raise ValueError(f"{annotations}:{number}: split must be one of "
                       f"{', '.join(_SPLIT_VALUES)}, got {row['split']!r}")
    split = _SPLIT_VALUES[value]
    if split is None:
      left_out += 1
    else:
      rows[split].append((annotations, number, row))
  notes = [f"{annotations}: {left_out} test rows have no labels; not converted"] if left_out else []
  return rows, notes


def read(annotations: str, root: str) -> Listing:
  """Lists a Kinetics dataset (see the module docstring): train, and validation as ``test``.

  FileNotFoundError names a missing file or folder; ValueError the file and line of a
  malformed row, a row without a needed column, or a validation label no train row has.
  """
  if not fs.isdir(root):
    raise FileNotFoundError(f"Kinetics video folder {root} does not exist")
  rows, notes = _rows_by_split(annotations)
  for path, number, row in rows["train"] + rows["test"]:
    if not row["label"]:
      raise ValueError(f"{path}:{number}: empty label")
  class_names = sorted({row["label"] for _, _, row in rows["train"]})
  if not class_names:
    raise ValueError(f"{annotations}: no train rows")
  labels = {name: i for i, name in enumerate(class_names)}
  videos = _index_videos(root)
  listing = Listing(class_names=class_names, splits={split: [] for split in SPLITS}, notes=notes)
  for split in SPLITS:
    seen: set[str] = set()
    duplicates = 0
    for path, number, row in rows[split]:
      where = f"{path}:{number}"
      youtube_id = row["youtube_id"]
      if not youtube_id:
        raise ValueError(f"{where}: empty youtube_id")
      start = _seconds(row["time_start"], "time_start", where)
      end = _seconds(row["time_end"], "time_end", where)
      if end <= start:
        raise ValueError(f"{where}: time_end {row['time_end']} is not after "
                         f"time_start {row['time_start']}")
      label = labels.get(row["label"])
      if label is None:
        raise ValueError(f"{where}: label {row['label']!r} is not the label of any train row")
      name = clip_id(youtube_id, start, end)
      if name in seen:
        duplicates += 1
        continue
      seen.add(name)
      if name in videos:
        example = Example(videos[name], label, row["label"], name)
      elif youtube_id in videos:
        example = Example(videos[youtube_id], label, row["label"], name, start_s=start, end_s=end)
      else:
        listing.missing[split].append(os.path.join(root, name + ".mp4"))
        continue
      listing.splits[split].append(example)
    if duplicates:
      listing.notes.append(f"{split}: {duplicates} rows repeat an earlier clip; left out")
  return listing
