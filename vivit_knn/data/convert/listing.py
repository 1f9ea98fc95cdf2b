"""What a format reader hands the conversion pipeline: the examples of each split.

Every input format (UCF101, HMDB51, class folders, Kinetics, Something-Something
v2, EPIC-KITCHENS-100) is read by a function that returns a :class:`Listing`;
one pipeline (:mod:`.pipeline`) then decodes, encodes and writes the shards of
any listing the same way. Listing never decodes a video: it reads annotation
files and checks which video files exist.
"""

from __future__ import annotations

import dataclasses

# The two splits the converter writes. `test` holds the split a dataset is
# evaluated on: the official test list of UCF101/HMDB51, the validation set of
# Kinetics, Something-Something v2 and EPIC-KITCHENS-100.
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Example:
  """One record to write: a video file (or a time range of it) and its labels.

  Attributes:
    path: The video file (a local path or a ``gs://`` style URL).
    label: The class index, stored as ``clip/label/index``.
    label_text: The class name, stored as ``clip/label/text``.
    name: The example's name, unique within its split, stored as
      ``video/filename`` (a path relative to ``--root``, or a dataset id such
      as a Something-Something video id or an EPIC-KITCHENS narration id).
    start_s: With ``end_s``: only the frames shown from ``start_s`` to
      ``end_s`` seconds are kept (a segment of an untrimmed video); None keeps
      the whole video.
    end_s: End of the segment in seconds (see ``start_s``).
    label_sets: Further labels, ``(set, index, text)`` each, e.g.
      ``("verb", 3, "open")``; stored as ``clip/label/<set>/index`` and
      ``clip/label/<set>/text``.
  """

  path: str
  label: int
  label_text: str
  name: str
  start_s: float | None = None
  end_s: float | None = None
  label_sets: tuple[tuple[str, int, str], ...] = ()


@dataclasses.dataclass
class Listing:
  """The examples of a dataset, ready to convert.

  Attributes:
    class_names: Name of each class index.
    splits: ``{'train': [...], 'test': [...]}`` examples in their listed order
      (the pipeline shuffles train once, with a fixed seed).
    missing: ``{split: [video file, ...]}`` listed by the annotations but
      absent; counted and reported as skipped, never an error.
    label_sets: ``{set: [name of each index]}`` of the further labels the
      examples carry (e.g. EPIC-KITCHENS ``verb`` and ``noun``); recorded in
      ``metadata.json``.
    notes: Lines for the conversion summary (e.g. annotation rows left out,
      and why).
  """

  class_names: list[str]
  splits: dict[str, list[Example]]
  missing: dict[str, list[str]] = dataclasses.field(
      default_factory=lambda: {split: [] for split in SPLITS})
  label_sets: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)
