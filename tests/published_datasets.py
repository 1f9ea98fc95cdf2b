"""Small datasets written in the layouts Kinetics, Something-Something v2 and
EPIC-KITCHENS-100 are published in: annotation files exactly as downloaded
(header, quoting, JSON shape, file names) and genuine video files (PyAV).

Every video frame carries two marks that survive H.264/VP9, JPEG and
downscaling:

* the top half holds three grey blocks whose levels (8 each) spell the
  frame's index in its file: :func:`frame_number` reads it back, so a test
  can tell which frames of a long video a segment kept (frame ``i`` shows
  time ``i / FPS`` seconds);
* the bottom half is one colour of :data:`COLOURS`: the class index for
  Kinetics and Something-Something v2, the video's number for EPIC-KITCHENS
  (whose segments share videos); :func:`colour_index` reads it back.

Each writer returns a dataclass of what it wrote, including the videos left
out on purpose (``missing``, by split of the converted dataset: ``train``,
and ``test`` for the validation set).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np

from tests.video_fixtures import write_video

FPS = 10
SIZE = (32, 48)  # (height, width): even, as 4:2:0 video needs.
COLOURS = ((220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 200, 40),
           (40, 200, 200), (200, 40, 200), (240, 130, 20), (120, 40, 160))
_LEVELS = 8
_BLOCKS = 3
MAX_FRAMES = _LEVELS ** _BLOCKS
# A block's grey may be off by this share of a level step before
# frame_number gives up (measured: at most 0.15 after H.264, VP9, JPEG and
# 4x downscaling at this size).
_TOLERANCE = 0.35
_COLOUR_TOLERANCE = 60.0


def marked_frames(num_frames: int, colour: int = 0,
                  size: tuple[int, int] = SIZE) -> np.ndarray:
  """uint8 ``[num_frames, H, W, 3]``: frame ``i`` shows ``i`` and a colour.

  Args:
    num_frames: At most :data:`MAX_FRAMES`.
    colour: Index into :data:`COLOURS` of the bottom half.
    size: ``(height, width)``, both even and at least 8.
  """
  if num_frames > MAX_FRAMES:
    raise ValueError(f"at most {MAX_FRAMES} marked frames, got {num_frames}")
  height, width = size
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  frames[:, height // 2:] = COLOURS[colour % len(COLOURS)]
  for i in range(num_frames):
    for block in range(_BLOCKS):
      digit = (i // _LEVELS ** (_BLOCKS - 1 - block)) % _LEVELS
      left, right = block * width // _BLOCKS, (block + 1) * width // _BLOCKS
      frames[i, :height // 2, left:right] = round(digit * 255 / (_LEVELS - 1))
  return frames


def frame_number(image: np.ndarray) -> int:
  """The index a :func:`marked_frames` frame shows, from decoded RGB pixels.

  Works on whole frames at any size (the marks are read at fractions of the
  frame), not on crops.

  Raises:
    ValueError: if a block's grey lies between two levels (not a marked
      frame, or damaged beyond recognition).
  """
  image = np.asarray(image, np.float64)
  height, width = image.shape[:2]
  # The middle half of each block, away from edges that codecs blur.
  top = height // 8
  bottom = max(3 * height // 8, top + 1)
  number = 0
  for block in range(_BLOCKS):
    left = int((block + 0.25) * width / _BLOCKS)
    right = max(int((block + 0.75) * width / _BLOCKS), left + 1)
    patch = image[top:bottom, left:right]
    level = patch.mean() * (_LEVELS - 1) / 255
    if abs(level - round(level)) > _TOLERANCE:
      raise ValueError(f"block {block} is grey {patch.mean():.1f}, between "
                       "two marker levels")
    number = number * _LEVELS + int(round(level))
  return number


def colour_index(image: np.ndarray) -> int:
  """The :data:`COLOURS` index of a marked frame's bottom half.

  Raises:
    ValueError: if no colour of the palette is close.
  """
  image = np.asarray(image, np.float64)
  height, width = image.shape[:2]
  mean = image[5 * height // 8:7 * height // 8 or 1,
               width // 4:3 * width // 4 or 1].reshape(-1, 3).mean(0)
  distances = np.linalg.norm(np.asarray(COLOURS, np.float64) - mean, axis=1)
  best = int(distances.argmin())
  if distances[best] > _COLOUR_TOLERANCE:
    raise ValueError(f"colour {mean.round()} is not one of the palette")
  return best


def _write(path: str, num_frames: int, colour: int, codec: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_video(path, marked_frames(num_frames, colour), FPS, codec)
  return path


# Kinetics.

# Real Kinetics-400 labels; two need quoting in the CSV.
KINETICS_CLASSES = ("tying knot (not on a tie)", "abseiling",
                    "passing American football (in game)")
KINETICS_HEADER = ("label", "youtube_id", "time_start", "time_end", "split",
                   "is_cc")
# The original K400/K600 test.csv has no label (and no is_cc).
KINETICS_TEST_HEADER = ("youtube_id", "time_start", "time_end", "split")
KINETICS_TRIMMED_FRAMES = 20
KINETICS_LONG_FRAMES = 140  # 14 s at FPS; rows end by 12 s.


@dataclasses.dataclass
class KineticsData:
  """A written Kinetics layout.

  Attributes:
    annotations: The ``--annotations`` path: the CSV folder, or the single
      CSV file when written with ``single_csv``.
    root: The ``--root`` video folder.
    csv_files: ``{'train'|'validate'|'test': path}`` of the CSV files (one
      ``'all'`` entry with ``single_csv``).
    rows: ``{'train'|'test': [row]}``: the labelled rows written, as
      ``{column: text}`` in file order; ``test`` holds the validation rows.
    unlabelled_rows: The rows of the test CSV (or the ``split=test`` rows),
      which are not converted.
    class_names: The train labels, sorted (the expected class index).
    trimmed: ``{clip id: path}`` of the trimmed clips, whole examples.
    untrimmed: ``{clip id: path}`` of the long ``<youtube_id>.mp4`` videos
      that examples must be cut from, ``KINETICS_LONG_FRAMES`` frames at
      :data:`FPS`.
    shadowed: ``{clip id: path}`` of untrimmed videos that must NOT be used
      because the trimmed clip exists too.
    missing: ``{'train'|'test': [clip id]}`` of rows without any video.
    fps: Frame rate of every video.
  """

  annotations: str
  root: str
  csv_files: dict[str, str]
  rows: dict[str, list[dict[str, str]]]
  unlabelled_rows: list[dict[str, str]]
  class_names: list[str]
  trimmed: dict[str, str]
  untrimmed: dict[str, str]
  shadowed: dict[str, str]
  missing: dict[str, list[str]]
  fps: int = FPS


def _kinetics_line(values: list[str]) -> str:
  """One CSV line: values with spaces, parentheses or commas quoted."""
  out = []
  for value in values:
    if value and not value.replace("_", "").replace("-", "").replace(
        ".", "").isalnum():
      out.append('"' + value.replace('"', '""') + '"')
    else:
      out.append(value)
  return ",".join(out) + "\n"


def kinetics_clip_id(youtube_id: str, start: int, end: int) -> str:
  """``<youtube_id>_<start:06d>_<end:06d>``."""
  return f"{youtube_id}_{start:06d}_{end:06d}"


def write_kinetics(folder: str, classes=KINETICS_CLASSES, *,
                   is_cc: bool = True, prefix: str = "",
                   single_csv: bool = False) -> KineticsData:
  """Writes a Kinetics dataset under ``folder``.

  ``<folder>/annotations/`` holds ``<prefix>train.csv``,
  ``<prefix>validate.csv`` and ``<prefix>test.csv`` (DeepMind's names and
  header; ``is_cc=False`` drops the ``is_cc`` column as in K700-2020), or with
  ``single_csv`` one ``kinetics.csv`` of all rows told apart by ``split``.
  ``<folder>/videos/`` holds:

  * train: per class two rows; trimmed clips in ``train/<label>/``, except
    class 1's second row, an untrimmed ``<youtube_id>.mp4`` at the top of
    the root, and class 2's second row, which has no video. Class 0's first
    clip also has a decoy untrimmed video (``shadowed``).
  * validation: class 0 trimmed in ``val/<label>/``, class 1 untrimmed in
    ``untrimmed/``, class 2 once missing and once trimmed at the top of the
    root.

  ``classes`` are in writing order; class ``k`` of the description is
  ``classes[k]``. Colours follow the sorted class index.
  """
  annotations = os.path.join(folder, "annotations")
  root = os.path.join(folder, "videos")
  os.makedirs(annotations, exist_ok=True)
  os.makedirs(root, exist_ok=True)
  class_names = sorted(classes)
  data = KineticsData(annotations, root, {}, {"train": [], "test": []}, [],
                      class_names, {}, {}, {}, {"train": [], "test": []})
  counter = 0

  def row(split: str, k: int, where: str) -> None:
    """Writes a row; ``where``: a trimmed clip's folder under the root,
    ``long:<folder>`` for an untrimmed video, or ``missing``."""
    nonlocal counter
    counter += 1
    label = classes[k]
    youtube_id = f"-{chr(65 + counter)}x_{counter:03d}q-Zk"
    start = 1 + counter % 2
    end = start + 10
    data.rows[split].append({
        "label": label, "youtube_id": youtube_id, "time_start": str(start),
        "time_end": str(end), "split": "val" if split == "test" else "train",
        "is_cc": str(counter % 2)})
    clip = kinetics_clip_id(youtube_id, start, end)
    colour = class_names.index(label)
    if where == "missing":
      data.missing[split].append(clip)
    elif where.startswith("long:"):
      path = os.path.join(root, where[len("long:"):], youtube_id + ".mp4")
      data.untrimmed[clip] = _write(path, KINETICS_LONG_FRAMES, colour,
                                    "libx264")
    else:
      path = os.path.join(root, where, clip + ".mp4")
      data.trimmed[clip] = _write(path, KINETICS_TRIMMED_FRAMES + counter,
                                  colour, "libx264")

  for k, label in enumerate(classes):
    row("train", k, f"train/{label}")
    row("train", k, {1: "long:", 2: "missing"}.get(k, f"train/{label}"))
  first = data.rows["train"][0]
  data.shadowed[next(iter(data.trimmed))] = _write(
      os.path.join(root, "untrimmed", first["youtube_id"] + ".mp4"),
      KINETICS_LONG_FRAMES, class_names.index(first["label"]), "libx264")
  row("test", 0, f"val/{classes[0]}")
  row("test", 1, "long:untrimmed")
  row("test", 2, "missing")
  row("test", 2, "")
  for n in range(2):
    data.unlabelled_rows.append({
        "youtube_id": f"tEsT{n:02d}-abc", "time_start": str(n),
        "time_end": str(n + 10), "split": "test"})
  header = list(KINETICS_HEADER if is_cc else KINETICS_HEADER[:-1])
  for written in data.rows["train"] + data.rows["test"]:
    if not is_cc:
      del written["is_cc"]

  def lines(rows, columns):
    return [_kinetics_line([r.get(c, "") for c in columns]) for r in rows]

  if single_csv:
    path = os.path.join(annotations, "kinetics.csv")
    with open(path, "w", newline="") as f:
      f.write(_kinetics_line(header))
      f.writelines(lines(data.rows["train"] + data.rows["test"]
                         + data.unlabelled_rows, header))
    data.csv_files["all"] = path
    data.annotations = path
    return data
  for name, rows, columns in (
      ("train", data.rows["train"], header),
      ("validate", data.rows["test"], header),
      ("test", data.unlabelled_rows, list(KINETICS_TEST_HEADER))):
    path = os.path.join(annotations, f"{prefix}{name}.csv")
    with open(path, "w", newline="") as f:
      f.write(_kinetics_line(columns))
      f.writelines(lines(rows, columns))
    data.csv_files[name] = path
  return data


# Something-Something v2.

# (template with brackets, index) as in the published labels.json.
SSV2_TEMPLATES = (
    ("Approaching [something] with your camera", 0),
    ("Holding [something] next to [something]", 1),
    ("Pouring [something] into [something] until it overflows", 2),
    ("Putting [something] on a surface", 3),
)
SSV2_FRAMES = 16


@dataclasses.dataclass
class SSv2Data:
  """A written Something-Something v2 layout.

  Attributes:
    annotations: The ``labels/`` folder.
    root: The video folder of ``<id>.webm`` (VP9).
    json_files: ``{'labels'|'train'|'validation'|'test': path}``.
    class_names: Templates without brackets, by index.
    entries: ``{'train'|'test': [entry]}``: the entries of ``train.json`` and
      ``validation.json`` as written (``test`` = validation).
    test_ids: The ids of ``test.json`` (not converted).
    videos: ``{id: path}`` of the videos written.
    missing: ``{'train'|'test': [id]}`` of entries without a video.
    fps: Frame rate of every video.
  """

  annotations: str
  root: str
  json_files: dict[str, str]
  class_names: list[str]
  entries: dict[str, list[dict]]
  test_ids: list[str]
  videos: dict[str, str]
  missing: dict[str, list[str]]
  fps: int = FPS


def write_ssv2(folder: str, *, prefixed: bool = False) -> SSv2Data:
  """Writes Something-Something v2 under ``folder``.

  ``<folder>/labels/`` holds ``labels.json``, ``train.json``,
  ``validation.json`` and ``test.json`` (with ``prefixed``: the
  ``something-something-v2-*.json`` names). ``<folder>/videos/<id>.webm``:
  six train videos, three validation videos and one validation entry whose
  video is missing. Colours follow the class index.
  """
  annotations = os.path.join(folder, "labels")
  root = os.path.join(folder, "videos")
  os.makedirs(annotations, exist_ok=True)
  os.makedirs(root, exist_ok=True)
  names = {template.replace("[", "").replace("]", ""): index
           for template, index in SSV2_TEMPLATES}
  data = SSv2Data(annotations, root, {}, sorted(names, key=names.get),
                  {"train": [], "test": []}, [], {}, {"train": [], "test": []})
  objects = (["a phone"], ["potato", "vicks vaporub bottle"],
             ["water", "a glass"], ["a pen"])
  plan = {"train": [0, 1, 2, 3, 1, 2], "test": [0, 3, 1, 2]}
  video_id = 78680
  for split, classes in plan.items():
    for n, index in enumerate(classes):
      video_id += 7
      template = SSV2_TEMPLATES[index][0]
      placeholders = objects[index][:template.count("[")]
      label = template
      for thing in placeholders:
        label = label.replace("[something]", thing, 1)
      data.entries[split].append({
          "id": str(video_id), "label": label.lower(), "template": template,
          "placeholders": placeholders})
      if split == "test" and n == len(classes) - 1:
        data.missing[split].append(str(video_id))
        continue
      data.videos[str(video_id)] = _write(
          os.path.join(root, f"{video_id}.webm"), SSV2_FRAMES + n, index,
          "libvpx-vp9")
  data.test_ids = ["1420", "29384"]
  prefix = "something-something-v2-" if prefixed else ""
  contents = {
      "labels": {template.replace("[", "").replace("]", ""): str(index)
                 for template, index in SSV2_TEMPLATES},
      "train": data.entries["train"], "validation": data.entries["test"],
      "test": [{"id": i} for i in data.test_ids]}
  for name, content in contents.items():
    path = os.path.join(annotations, f"{prefix}{name}.json")
    with open(path, "w") as f:
      json.dump(content, f, indent=None if name != "labels" else 4)
    data.json_files[name] = path
  return data


# EPIC-KITCHENS-100.

EK100_HEADER = ("narration_id", "participant_id", "video_id",
                "narration_timestamp", "start_timestamp", "stop_timestamp",
                "start_frame", "stop_frame", "narration", "verb", "verb_class",
                "noun", "noun_class", "all_nouns", "all_noun_classes")
EK100_TEST_HEADER = ("narration_id", "participant_id", "video_id",
                     "start_timestamp", "stop_timestamp", "start_frame",
                     "stop_frame")
EK100_CLASS_HEADER = ("id", "key", "instances", "category")
# (key, instances, category); the class files list more classes than the
# segments use, so counts from the class files and from the ids differ.
EK100_VERBS = (("take", ["take", "grab", "pick-up"], "retrieve"),
               ("put", ["put", "put-down", "place"], "leave"),
               ("wash", ["wash", "rinse"], "clean"),
               ("open", ["open", "unscrew"], "access"),
               ("close", ["close", "shut"], "block"))
EK100_NOUNS = (("tap", ["tap", "faucet"], "appliances"),
               ("plate", ["plate", "dish"], "crockery"),
               ("courgette", ["courgette", "zucchini"], "vegetables"),
               ("door", ["door"], "furniture"),
               ("pan", ["pan", "frying pan"], "cookware"),
               ("knife", ["knife"], "cutlery"))
EK100_LONG_FRAMES = 80  # 8 s at FPS.
# (participant, video, where, [(start, stop, verb, [nouns])]); where is
# 'nested' (<root>/<P>/videos/<video>.MP4), 'flat' (<root>/<video>.MP4) or
# 'missing'. Timestamps use 2 and 3 decimals like the published files.
_EK100_TRAIN = (
    ("P01", "P01_01", "nested", [("00:00:00.14", "00:00:03.37", 3, [3]),
                                 ("00:00:02.629", "00:00:04.05", 0, [2, 4]),
                                 ("00:00:05.50", "00:00:07.901", 2, [1])]),
    ("P03", "P03_04", "missing", [("00:00:01.00", "00:00:02.50", 1, [1]),
                                  ("00:00:03.20", "00:00:04.10", 0, [0])]),
)
_EK100_VALIDATION = (
    ("P01", "P01_11", "nested", [("00:00:01.20", "00:00:02.95", 1, [3]),
                                 ("00:00:04.00", "00:00:06.517", 3, [0])]),
    ("P02", "P02_12", "flat", [("00:00:00.50", "00:00:01.80", 2, [2, 4]),
                               ("00:00:03.05", "00:00:05.00", 0, [1])]),
)


@dataclasses.dataclass
class EK100Data:
  """A written EPIC-KITCHENS-100 layout.

  Attributes:
    annotations: The folder of the CSV files.
    root: The video folder.
    csv_files: ``{'train'|'validation'|'verb_classes'|'noun_classes'|
      'test_timestamps': path}`` of the files written.
    rows: ``{'train'|'test': [row]}``: the segments as written, as
      ``{column: text}`` in file order (``test`` = validation).
    verbs: Verb keys by id, as in the verb class file.
    nouns: Noun keys by id.
    videos: ``{video_id: path}`` of the long videos,
      ``EK100_LONG_FRAMES`` frames at :data:`FPS`; video ``k`` (in writing
      order, counting the missing one) has colour ``k``.
    missing: ``{'train'|'test': [narration_id]}`` of segments whose video
      is absent.
    missing_videos: ``{video_id: participant_id}`` of the absent videos.
    fps: Frame rate of every video.
  """

  annotations: str
  root: str
  csv_files: dict[str, str]
  rows: dict[str, list[dict[str, str]]]
  verbs: list[str]
  nouns: list[str]
  videos: dict[str, str]
  missing: dict[str, list[str]]
  missing_videos: dict[str, str]
  fps: int = FPS


def _ek100_frame(timestamp: str) -> int:
  hours, minutes, seconds = timestamp.split(":")
  return int(round((int(hours) * 3600 + int(minutes) * 60 + float(seconds))
                   * FPS))


def write_ek100(folder: str, *, class_files: bool = True,
                test_file: bool = True) -> EK100Data:
  """Writes EPIC-KITCHENS-100 under ``folder``.

  ``<folder>/annotations/``: ``EPIC_100_train.csv`` and
  ``EPIC_100_validation.csv`` with the published header (list columns
  quoted when they hold a comma), ``EPIC_100_verb_classes.csv`` and
  ``EPIC_100_noun_classes.csv`` (unless not ``class_files``) and
  ``EPIC_100_test_timestamps.csv`` (if ``test_file``). ``<folder>/videos/``:
  long videos with several segments each, at
  ``<P>/videos/<video_id>.MP4`` and one at ``<video_id>.MP4``; train video
  ``P03_04`` (two segments) is missing.
  """
  annotations = os.path.join(folder, "annotations")
  root = os.path.join(folder, "videos")
  os.makedirs(annotations, exist_ok=True)
  os.makedirs(root, exist_ok=True)
  data = EK100Data(annotations, root, {}, {"train": [], "test": []},
                   [v[0] for v in EK100_VERBS], [n[0] for n in EK100_NOUNS],
                   {}, {"train": [], "test": []}, {})
  colour = 0
  for split, name, videos in (("train", "EPIC_100_train.csv", _EK100_TRAIN),
                              ("test", "EPIC_100_validation.csv",
                               _EK100_VALIDATION)):
    for participant, video_id, where, segments in videos:
      if where == "missing":
        data.missing_videos[video_id] = participant
      else:
        folder_of = (os.path.join(root, participant, "videos")
                     if where == "nested" else root)
        data.videos[video_id] = _write(
            os.path.join(folder_of, video_id + ".MP4"), EK100_LONG_FRAMES,
            colour, "libx264")
      colour += 1
      for n, (start, stop, verb, nouns) in enumerate(segments):
        narration_id = f"{video_id}_{n}"
        verb_key, noun_keys = data.verbs[verb], [data.nouns[i] for i in nouns]
        seconds = start.split(":")
        narrated = f"{seconds[0]}:{seconds[1]}:{float(seconds[2]) + 0.949:06.3f}"
        data.rows[split].append({
            "narration_id": narration_id, "participant_id": participant,
            "video_id": video_id, "narration_timestamp": narrated,
            "start_timestamp": start, "stop_timestamp": stop,
            "start_frame": str(_ek100_frame(start)),
            "stop_frame": str(_ek100_frame(stop)),
            "narration": " ".join([verb_key] + noun_keys),
            "verb": verb_key, "verb_class": str(verb),
            "noun": noun_keys[0], "noun_class": str(nouns[0]),
            "all_nouns": str(noun_keys), "all_noun_classes": str(nouns)})
        if where == "missing":
          data.missing[split].append(narration_id)
    path = os.path.join(annotations, name)
    _write_csv(path, EK100_HEADER, data.rows[split])
    data.csv_files["validation" if split == "test" else "train"] = path
  if class_files:
    for kind, classes in (("verb", EK100_VERBS), ("noun", EK100_NOUNS)):
      path = os.path.join(annotations, f"EPIC_100_{kind}_classes.csv")
      _write_csv(path, EK100_CLASS_HEADER, [
          {"id": str(i), "key": key, "instances": str(instances),
           "category": category}
          for i, (key, instances, category) in enumerate(classes)])
      data.csv_files[f"{kind}_classes"] = path
  if test_file:
    path = os.path.join(annotations, "EPIC_100_test_timestamps.csv")
    _write_csv(path, EK100_TEST_HEADER, [
        {"narration_id": "P01_101_0", "participant_id": "P01",
         "video_id": "P01_101", "start_timestamp": "00:00:00.76",
         "stop_timestamp": "00:00:02.23", "start_frame": "38",
         "stop_frame": "111"}])
    data.csv_files["test_timestamps"] = path
  return data


def _write_csv(path: str, header, rows: list[dict[str, str]]) -> None:
  """Comma-separated, quoted only where needed, as the EPIC files are."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([row[column] for column in header] for row in rows)
