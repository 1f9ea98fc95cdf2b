"""Train/test lists of the raw-folder layouts: UCF101, HMDB51, class-per-directory.

Videos a split file lists but the disk lacks are returned apart, to be counted as skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

UCF101_SPLITS_DIR = "ucfTrainTestlist"
HMDB51_SPLITS_DIR = "testTrainMulti_7030_splits"
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v")
# HMDB51 split files mark each video 1 = train, 2 = test, 0 = unused.
_HMDB_TRAIN, _HMDB_TEST = "1", "2"


@dataclasses.dataclass
class VideoList:
  """Videos of one split: absolute paths, labels, and absent listed files."""

  paths: list[str] = dataclasses.field(default_factory=list)
  labels: list[int] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)

  def add(self, path: str, label: int) -> None:
    """Adds a video, or records it as missing if the file is absent."""
    if os.path.isfile(path):
      self.paths.append(path)
      self.labels.append(label)
    else:
      self.missing.append(path)


@dataclasses.dataclass
class VideoSplits:
  """Class names and the train/test videos of one split."""

  class_names: list[str]
  train: VideoList
  test: VideoList


def check_split(split: int) -> None:
  """Raises ValueError unless ``split`` is an official split: 1, 2 or 3."""
  if split not in (1, 2, 3):
    raise ValueError(f"dataset.split must be 1, 2 or 3, got {split}")


def _require_file(path: str, what: str) -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} {path} does not exist")


def _lines(path: str) -> list[tuple[int, str]]:
  with open(path) as f:
    return [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]


def ucf101(data_dir: str, split: int, splits_dir: str = "") -> VideoSplits:
  """UCF101 ``<data_dir>[/UCF-101]/<Class>/v_<Class>_gXX_cYY.avi`` with the split lists.

  ``splits_dir`` (default ``<data_dir>/ucfTrainTestlist``) holds ``classInd.txt``,
  ``trainlist0<split>.txt`` and ``testlist0<split>.txt``.
  """
  check_split(split)
  splits_dir = splits_dir or os.path.join(data_dir, UCF101_SPLITS_DIR)
  class_file = os.path.join(splits_dir, "classInd.txt")
  _require_file(class_file, "UCF101 class index")
  names: dict[int, str] = {}
  for number, line in _lines(class_file):
    parts = line.split()
    if len(parts) != 2 or not parts[0].isdigit():
      raise ValueError(f"{class_file}:{number}: expected '<index> <class>', got {line!r}")
    names[int(parts[0])] = parts[1]
  if sorted(names) != list(range(1, len(names) + 1)):
    raise ValueError(f"{class_file}: class indices must be 1..{len(names)}")
  class_names = [names[i] for i in range(1, len(names) + 1)]
  # UCF101's lists and folders disagree on case (HandStandPushups).
  by_name = {name.lower(): i for i, name in enumerate(class_names)}
  nested = os.path.join(data_dir, "UCF-101")  # Where the archive unpacks.
  root = nested if os.path.isdir(nested) else data_dir
  lists = {}
  for kind in ("train", "test"):
    list_file = os.path.join(splits_dir, f"{kind}list0{split}.txt")
    _require_file(list_file, f"UCF101 {kind} list")
    videos = VideoList()
    for number, line in _lines(list_file):
      relpath = line.split()[0]
      class_dir = relpath.split("/")[0]
      if "/" not in relpath or class_dir.lower() not in by_name:
        raise ValueError(f"{list_file}:{number}: class {class_dir!r} of {relpath!r} is not in "
                         f"{class_file}")
      videos.add(os.path.join(root, relpath), by_name[class_dir.lower()])
    lists[kind] = videos
  return VideoSplits(class_names, lists["train"], lists["test"])


def hmdb51(data_dir: str, split: int, splits_dir: str = "") -> VideoSplits:
  """HMDB51 ``<class>/<name>.avi`` with ``<class>_test_split<k>.txt`` files.

  Classes are the split files' classes, sorted; each class folder needs its file.
  """
  check_split(split)
  splits_dir = splits_dir or os.path.join(data_dir, HMDB51_SPLITS_DIR)
  if not os.path.isdir(splits_dir):
    raise FileNotFoundError(f"HMDB51 splits folder {splits_dir} does not exist")
  suffix = f"_test_split{split}.txt"
  class_names = sorted(f[:-len(suffix)] for f in os.listdir(splits_dir) if f.endswith(suffix))
  if not class_names:
    raise FileNotFoundError(f"no HMDB51 split file <class>{suffix} in {splits_dir}")
  for entry in sorted(os.listdir(data_dir)):
    has_videos = os.path.isdir(os.path.join(data_dir, entry)) and any(
        f.lower().endswith(VIDEO_EXTENSIONS)
        for f in os.listdir(os.path.join(data_dir, entry)))
    if has_videos and entry not in class_names:
      raise FileNotFoundError(f"HMDB51 split file {os.path.join(splits_dir, entry + suffix)} "
                              f"for class directory {entry!r} does not exist")
  train, test = VideoList(), VideoList()
  for label, name in enumerate(class_names):
    split_file = os.path.join(splits_dir, name + suffix)
    for number, line in _lines(split_file):
      parts = line.split()
      if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
        raise ValueError(f"{split_file}:{number}: expected '<video> 0|1|2', got {line!r}")
      path = os.path.join(data_dir, name, parts[0])
      if parts[1] == _HMDB_TRAIN:
        train.add(path, label)
      elif parts[1] == _HMDB_TEST:
        test.add(path, label)
  return VideoSplits(class_names, train, test)


def _class_videos(directory: str) -> dict[str, list[str]]:
  """``{class: sorted video paths}`` for the class folders of ``directory``."""
  out = {}
  for name in sorted(os.listdir(directory)):
    class_dir = os.path.join(directory, name)
    if not os.path.isdir(class_dir):
      continue
    videos = sorted(os.path.join(class_dir, f) for f in os.listdir(class_dir)
                    if f.lower().endswith(VIDEO_EXTENSIONS))
    if videos:
      out[name] = videos
  return out


def _stable_key(path: str, root: str) -> str:
  """Hash of the path relative to ``root``: a seedless, stable shuffle key."""
  return hashlib.sha1(os.path.relpath(path, root).encode()).hexdigest()


def class_folders(root: str, eval_fraction: float = 0.1) -> VideoSplits:
  """A class-per-directory folder ``<root>/<class>/<video>``.

  ``train/`` and ``test/`` (or ``val/``) folders of classes, if there, are the
  splits. Otherwise each class holds out ``round(eval_fraction * n)`` of its
  ``n`` videos (at least one if ``eval_fraction > 0`` and ``n > 1``), chosen by
  a hash of the relative path: stable, and kept when videos are added.
  """
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
  held_out = next((os.path.join(root, d) for d in ("test", "val")
                   if os.path.isdir(os.path.join(root, d))), None)
  if os.path.isdir(os.path.join(root, "train")) and held_out:
    train_videos, test_videos = _class_videos(os.path.join(root, "train")), _class_videos(held_out)
  else:
    train_videos, test_videos = {}, {}
    for name, videos in _class_videos(root).items():
      ordered = sorted(videos, key=lambda p: _stable_key(p, root))
      count = round(eval_fraction * len(ordered))
      if eval_fraction > 0 and len(ordered) > 1:
        count = max(count, 1)
      test_videos[name] = sorted(ordered[:count])
      train_videos[name] = sorted(ordered[count:])
  class_names = sorted(set(train_videos) | set(test_videos))
  if not class_names:
    raise FileNotFoundError(f"no <class>/<video> folders with videos "
                            f"({', '.join(VIDEO_EXTENSIONS)}) under {root}")
  splits = VideoSplits(class_names, VideoList(), VideoList())
  for label, name in enumerate(class_names):
    for path in train_videos.get(name, []):
      splits.train.add(path, label)
    for path in test_videos.get(name, []):
      splits.test.add(path, label)
  return splits
