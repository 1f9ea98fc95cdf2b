"""Datasets ``ucf101`` and ``hmdb51``: one name for the raw folder, TFRecords or TFDS.

``format`` picks the storage: ``'folder'`` (the official archive unpacked, with
its split files), ``'tfrecord'`` (DMVR shards, e.g. from ``python -m
vivit_knn.data.convert``) or ``'tfds'`` (UCF101's TFDS builder).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ml_collections
from absl import logging

from vivit_knn.data import clips, options, skips, splits, tfds_source, tfrecord

FORMATS = ("folder", "tfrecord", "tfds")


@dataclasses.dataclass(frozen=True)
class NamedVideoSet:
  """What differs between UCF101 and HMDB51."""

  name: str
  title: str
  num_classes: int
  split1_sizes: tuple[int, int]  # (train, test) of official split 1.
  splits_dir: str  # Standard split-file folder under data_dir.
  list_videos: Callable[[str, int, str], splits.VideoSplits]
  tfds_builder: str  # '' = none; '{split}' is replaced by dataset.split.


UCF101 = NamedVideoSet("ucf101", "UCF101", 101, (9537, 3783),
                       splits.UCF101_SPLITS_DIR, splits.ucf101,
                       "ucf101/ucf101_{split}")
HMDB51 = NamedVideoSet("hmdb51", "HMDB51", 51, (3570, 1530),
                       splits.HMDB51_SPLITS_DIR, splits.hmdb51, "")


def _folder_dataset(dataset: NamedVideoSet, cfg, spec) -> clips.ClipDataset:
  lists = dataset.list_videos(cfg.data_dir, cfg.split, cfg.splits_dir)
  counter = skips.SkipCounter()
  for split, videos in (("train", lists.train), ("eval", lists.test)):
    for path in videos.missing:
      counter.record((split, skips.LISTING_MISSING, path), skips.BadVideoError(
          skips.MISSING, path, "listed in the split files"))
  sizes = (len(lists.train.paths), len(lists.test.paths))
  if cfg.split == 1 and sizes != dataset.split1_sizes:  # Partial data.
    logging.warning("%s split 1 has %d train / %d test videos here; the official split has "
                    "%d / %d", dataset.title, *sizes, *dataset.split1_sizes)
  return clips.ClipDataset(clips.VideoFileTable(lists.train.paths, lists.train.labels),
                           clips.VideoFileTable(lists.test.paths, lists.test.labels),
                           lists.class_names, spec, counter)


def _record_dataset(dataset: NamedVideoSet, cfg, spec) -> clips.ClipDataset:
  try:
    return tfrecord.build_record_dataset(
        data_dir=cfg.data_dir, train_pattern=cfg.train_pattern, eval_pattern=cfg.eval_pattern,
        spec=spec, class_names_file=options.resolve_path(cfg.class_names_file, cfg.data_dir),
        fallback_num_classes=dataset.num_classes, expected_split=cfg.split)
  except FileNotFoundError as err:
    if os.path.isdir(os.path.join(cfg.data_dir, dataset.splits_dir)):
      raise FileNotFoundError(
          f"{err}. {cfg.data_dir} looks like a raw {dataset.title} folder: set "
          "--config.dataset.format=folder, or convert it with `python -m vivit_knn.data.convert "
          f"--format={dataset.name} --root={cfg.data_dir} --out=<dir>`") from None
    raise


def _tfds_dataset(dataset: NamedVideoSet, cfg, spec) -> clips.ClipDataset:
  if not dataset.tfds_builder:
    raise ValueError(f"{dataset.title} has no TFDS builder: use "
                     "dataset.format='folder' or 'tfrecord'")
  return tfds_source.build_tfds_dataset(
      builder=dataset.tfds_builder.format(split=cfg.split), data_dir=cfg.data_dir, spec=spec)


def build(dataset: NamedVideoSet, cfg: ml_collections.ConfigDict) -> clips.ClipDataset:
  """Builds ``dataset`` (:data:`UCF101` or :data:`HMDB51`) from its config."""
  if cfg.format not in FORMATS:
    raise ValueError(f"dataset.format must be one of {FORMATS}, got {cfg.format!r}")
  splits.check_split(cfg.split)
  if not cfg.data_dir:
    raise ValueError(
        f"dataset.data_dir is empty: {dataset.title} needs its videos or TFRecords on disk. "
        f"Pass --config.dataset.data_dir=<dir> (a {dataset.title} folder with "
        f"{dataset.splits_dir}/ together with --config.dataset.format=folder, or TFRecords "
        f"written by `python -m vivit_knn.data.convert --format={dataset.name}`).")
  clips.check_data_dir(cfg.data_dir)
  spec = options.ProcessSpec.from_config(cfg)
  build_fn = {"folder": _folder_dataset, "tfrecord": _record_dataset, "tfds": _tfds_dataset}
  return build_fn[cfg.format](dataset, cfg, spec)
