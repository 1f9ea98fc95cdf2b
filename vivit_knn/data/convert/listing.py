"""What a format reader hands the conversion pipeline: the examples of each split.

Listing reads annotation files and checks which videos exist; it decodes nothing.
"""

from __future__ import annotations

import dataclasses

# `test` is the split a dataset is evaluated on: the official test list of
# UCF101/HMDB51, the validation set of the others.
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Example:
  """One record to write: a video file (or a time range of it) and its labels.

  Attributes:
    path: The video file (a local path or a ``gs://`` style URL).
    label: The class index (``clip/label/index``).
    label_text: The class name (``clip/label/text``).
    name: Unique within its split (``video/filename``): the path relative to
      ``--root``, or a dataset id (SSv2 video id, EPIC-KITCHENS narration id).
    start_s: With ``end_s``, keeps only the frames shown between them, in
      seconds (a segment of an untrimmed video); None keeps the whole video.
    end_s: End of the segment in seconds.
    label_sets: Further labels ``(set, index, text)``, e.g. ``("verb", 3, "open")``
      (``clip/label/<set>/index`` and ``/text``).
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
    splits: ``{'train': [...], 'test': [...]}`` examples in their listed order.
    missing: ``{split: [video file, ...]}`` listed but absent; reported as skipped.
    label_sets: ``{set: [name of each index]}`` of the further labels (e.g.
      EPIC-KITCHENS ``verb`` and ``noun``), recorded in ``metadata.json``.
    notes: Lines for the conversion summary (e.g. rows left out, and why).
  """

  class_names: list[str]
  splits: dict[str, list[Example]]
  missing: dict[str, list[str]] = dataclasses.field(
      default_factory=lambda: {split: [] for split in SPLITS})
  label_sets: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)
