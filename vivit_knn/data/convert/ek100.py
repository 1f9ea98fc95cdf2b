"""EPIC-KITCHENS-100 action recognition as published: the CSV files and videos.

``annotations`` is the folder (or a file in it) of ``EPIC_100_train.csv`` and
``EPIC_100_validation.csv``, columns found by header name. Each row is a segment
``[start_timestamp, stop_timestamp]`` (``HH:MM:SS.ff``) of video ``video_id`` at
``<root>/<participant_id>/videos/<video_id>.MP4`` or ``<root>/<video_id>.MP4``
(``.mp4`` too); an absent one is listed as missing once per segment, by the
first path. Verb and noun names are the ``key`` column of
``EPIC_100_{verb,noun}_classes.csv`` by ``id``, else ``verb_<id>`` up to the
largest id seen. The label is the action ``verb * num_nouns + noun``, named
``"<verb> <noun>"``, with the label sets ``verb`` and ``noun`` kept. The
unlabelled ``EPIC_100_test_timestamps.csv`` is not converted; validation is the
``test`` split.
"""

from __future__ import annotations

import os
import re

from vivit_knn.data.convert import files as fs
from vivit_knn.data.convert.listing import SPLITS, Example, Listing

FILES = {"train": "EPIC_100_train.csv", "test": "EPIC_100_validation.csv"}
CLASS_FILES = {"verb": "EPIC_100_verb_classes.csv", "noun": "EPIC_100_noun_classes.csv"}
TEST_FILE = "EPIC_100_test_timestamps.csv"
_REQUIRED = ("narration_id", "participant_id", "video_id", "start_timestamp",
             "stop_timestamp", "verb_class", "noun_class")
_TIMESTAMP = re.compile(r"(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)")
_SETS = ("verb", "noun")


def parse_timestamp(value: str) -> float:
  """Seconds of an ``HH:MM:SS.ff`` timestamp; ValueError if malformed."""
  match = _TIMESTAMP.fullmatch(value.strip())
  if not match:
    raise ValueError(f"expected HH:MM:SS.ff, got {value!r}")
  hours, minutes, seconds = match.groups()
  return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _class_id(row: dict[str, str], column: str, where: str) -> int:
  value = row[column]
  if not value.isdigit():
    raise ValueError(f"{where}: column {column}: expected a class id, got {value!r}")
  return int(value)


def _class_file(path: str) -> list[str]:
  """Names (``key``) of a class file, by ``id``."""
  names: dict[int, str] = {}
  for number, row in fs.csv_rows(path, ("id", "key")):
    index = _class_id(row, "id", f"{path}:{number}")
    if index in names:
      raise ValueError(f"{path}:{number}: id {index} listed twice")
    names[index] = row["key"]
  if sorted(names) != list(range(len(names))):
    raise ValueError(f"{path}: ids must be 0..{len(names) - 1} without gaps")
  return [names[i] for i in range(len(names))]


def _video_path(root: str, participant: str, video_id: str) -> str | None:
  for folder in (os.path.join(root, participant, "videos"), root):
    for ext in (".MP4", ".mp4"):
      path = os.path.join(folder, video_id + ext)
      if fs.isfile(path):
        return path
  return None


def read(annotations: str, root: str) -> Listing:
  """Lists EPIC-KITCHENS-100 (see the module docstring): one example per segment.

  FileNotFoundError names a missing annotation file or ``root``; ValueError the file, line
  (and column) of a malformed row or timestamp, a missing column, a repeated narration id,
  or a class id beyond the class file.
  """
  annotations = fs.annotation_folder(annotations, root, "EPIC-KITCHENS-100", "annotations folder")
  rows = {}
  for split, name in FILES.items():
    path = os.path.join(annotations, name)
    if not fs.isfile(path):
      raise FileNotFoundError(f"EPIC-KITCHENS-100 annotation file {path} does not exist")
    rows[split] = [(path, number, row) for number, row in fs.csv_rows(path, _REQUIRED)]
  names: dict[str, list[str] | None] = {}
  for label_set in _SETS:
    path = os.path.join(annotations, CLASS_FILES[label_set])
    names[label_set] = _class_file(path) if fs.isfile(path) else None
  segments = {split: [] for split in SPLITS}
  largest = {label_set: -1 for label_set in _SETS}
  for split in SPLITS:
    seen: set[str] = set()
    for path, number, row in rows[split]:
      where = f"{path}:{number}"
      for column in ("narration_id", "participant_id", "video_id"):
        if not row[column]:
          raise ValueError(f"{where}: column {column} is empty")
      if row["narration_id"] in seen:
        raise ValueError(f"{where}: narration_id {row['narration_id']} listed twice")
      seen.add(row["narration_id"])
      times = []
      for column in ("start_timestamp", "stop_timestamp"):
        try:
          times.append(parse_timestamp(row[column]))
        except ValueError as err:
          raise ValueError(f"{where}: column {column}: {err}") from None
      if times[1] < times[0]:
        raise ValueError(f"{where}: stop_timestamp {row['stop_timestamp']} "
                         f"is before start_timestamp {row['start_timestamp']}")
      ids = {}
      for label_set in _SETS:
        ids[label_set] = _class_id(row, f"{label_set}_class", where)
        known = names[label_set]
        if known is not None and ids[label_set] >= len(known):
          raise ValueError(f"{where}: column {label_set}_class: id {ids[label_set]} is not in "
                           f"{os.path.join(annotations, CLASS_FILES[label_set])} ({len(known)} "
                           "classes)")
        largest[label_set] = max(largest[label_set], ids[label_set])
      segments[split].append((row, times, ids))
  for label_set in _SETS:
    if names[label_set] is None:
      names[label_set] = [f"{label_set}_{i}" for i in range(largest[label_set] + 1)]
  verbs, nouns = names["verb"], names["noun"]
  listing = Listing(class_names=[f"{verb} {noun}" for verb in verbs for noun in nouns],
                    splits={split: [] for split in SPLITS},
                    label_sets={"verb": list(verbs), "noun": list(nouns)})
  videos: dict[tuple[str, str], str | None] = {}
  for split in SPLITS:
    for row, (start, end), ids in segments[split]:
      key = (row["participant_id"], row["video_id"])
      if key not in videos:
        videos[key] = _video_path(root, *key)
      if videos[key] is None:
        listing.missing[split].append(os.path.join(root, key[0], "videos", key[1] + ".MP4"))
        continue
      verb, noun = verbs[ids["verb"]], nouns[ids["noun"]]
      listing.splits[split].append(Example(
          videos[key], ids["verb"] * len(nouns) + ids["noun"], f"{verb} {noun}",
          row["narration_id"], start_s=start, end_s=end,
          label_sets=(("verb", ids["verb"], verb), ("noun", ids["noun"], noun))))
  test_file = os.path.join(annotations, TEST_FILE)
  if fs.isfile(test_file):
    listing.notes.append(f"{test_file}: test segments have no labels; not converted")
  return listing
