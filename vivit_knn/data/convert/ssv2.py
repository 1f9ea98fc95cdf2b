"""Something-Something v2 as published: the ``labels/`` JSON files and videos.

``annotations`` is the ``labels/`` folder (or a file in it): ``labels.json``
maps each template without square brackets to its class index, a string
(``{"Approaching something with your camera": "0", ...}``, indices 0..N-1);
``train.json`` and ``validation.json`` list ``{"id", "label", "template",
"placeholders"}`` entries whose class is the ``template`` without ``[`` and
``]``; ``test.json`` (ids only) is not converted. Names may carry the prefix
``something-something-v2-``. Video ``<id>`` is ``<root>/<id>.webm`` (or under
``<root>/20bn-something-something-v2/``). Validation is the ``test`` split.
"""

from __future__ import annotations

import json
import os

from vivit_knn.data.convert import files as fs
from vivit_knn.data.convert.listing import SPLITS, Example, Listing

ARCHIVE_DIR = "20bn-something-something-v2"
_PREFIX = "something-something-v2-"


def _find(folder: str, name: str, required: bool = True) -> str | None:
  """``<folder>/<name>.json`` or its prefixed name; None if absent."""
  for candidate in (name + ".json", _PREFIX + name + ".json"):
    path = os.path.join(folder, candidate)
    if fs.isfile(path):
      return path
  if required:
    raise FileNotFoundError(f"Something-Something v2 {name} file {os.path.join(folder, name)}"
                            f".json (or {_PREFIX}{name}.json) does not exist")
  return None


def _load(path: str):
  with fs.open_text(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as err:
      raise ValueError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None


def _class_names(path: str) -> list[str]:
  """Templates (without brackets) ordered by their index in ``path``."""
  labels = _load(path)
  if not isinstance(labels, dict) or not labels:
    raise ValueError(f"{path}: expected an object mapping each template to its index")
  by_index: dict[int, str] = {}
  for template, index in labels.items():
    try:
      number = int(index)
    except (TypeError, ValueError):
      raise ValueError(f"{path}: index of {template!r} must be an integer, got {index!r}") from None
    if number in by_index:
      raise ValueError(f"{path}: {template!r} and {by_index[number]!r} share index {number}")
    by_index[number] = template
  if sorted(by_index) != list(range(len(by_index))):
    absent = sorted(set(range(len(by_index))) - set(by_index))
    raise ValueError(f"{path}: indices must be 0..{len(by_index) - 1} "
                     f"without gaps; missing {absent[:5]}")
  return [by_index[i] for i in range(len(by_index))]


def _entries(path: str) -> list[dict]:
  entries = _load(path)
  if not isinstance(entries, list):
    raise ValueError(f"{path}: expected a list of entries")
  return entries


def read(annotations: str, root: str) -> Listing:
  """Lists Something-Something v2 (see the module docstring); absent videos in ``missing``.

  ValueError names the file (and entry number or id) of malformed JSON, an entry without an
  id or template, a repeated id, or a template that ``labels.json`` does not define.
  """
  annotations = fs.annotation_folder(annotations, root, "Something-Something v2", "labels folder")
  nested = os.path.join(root, ARCHIVE_DIR)
  video_dir = nested if fs.isdir(nested) else root
  present = set(fs.listdir(video_dir))  # One listing, not 220k stat calls.
  labels_file = _find(annotations, "labels")
  class_names = _class_names(labels_file)
  labels = {name: i for i, name in enumerate(class_names)}
  listing = Listing(class_names=class_names, splits={split: [] for split in SPLITS})
  for split, name in (("train", "train"), ("test", "validation")):
    path = _find(annotations, name)
    seen: set[str] = set()
    for number, entry in enumerate(_entries(path)):
      if not isinstance(entry, dict) or not str(entry.get("id", "")).strip():
        raise ValueError(f"{path}: entry {number} has no id")
      video_id = str(entry["id"]).strip()
      where = f"{path}: entry {number} (id {video_id})"
      if video_id in seen:
        raise ValueError(f"{where}: id listed twice")
      seen.add(video_id)
      template = entry.get("template")
      if not isinstance(template, str):
        raise ValueError(f"{where}: no template")
      class_name = template.replace("[", "").replace("]", "")
      if class_name not in labels:
        raise ValueError(f"{where}: template {template!r} is not in {labels_file}")
      video = os.path.join(video_dir, video_id + ".webm")
      if video_id + ".webm" in present:
        listing.splits[split].append(Example(video, labels[class_name], class_name, video_id))
      else:
        listing.missing[split].append(video)
  test_file = _find(annotations, "test", required=False)
  if test_file:
    count = len(_entries(test_file))
    listing.notes.append(f"{test_file}: {count} test videos have no labels; not converted")
  return listing
