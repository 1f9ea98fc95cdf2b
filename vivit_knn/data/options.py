"""The ``config.dataset`` schema: every source's fields and defaults, and their checks.

A real source's defaults are its own fields plus :func:`processing_fields`;
:class:`ProcessSpec` is the checked, immutable view of the latter. Nothing here
imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

NORMALIZATIONS = ("zero_centered", "imagenet")
FRAME_SAMPLINGS = ("strided", "segments")
TEST_CROPS = (1, 3)
# Default resize-smallest target relative to the crop (256 for a 224 crop).
AUTO_RESIZE_RATIO = 8 / 7


def processing_fields() -> dict:
  """Processing fields every real-source config has, with their defaults."""
  return {
      # One model clip. frame_sampling='strided': num_frames frames taken
      # every frame_stride frames (a random window in training, windows spread
      # evenly at test time). 'segments' (TSN-style, as VideoMAE samples
      # SSv2): the video is cut into num_frames equal segments and each gives
      # one frame, a random one in training, its middle at test time; needs
      # frame_stride=1.
      "num_frames": 8,
      "frame_stride": 2,
      "frame_sampling": "strided",
      # Square crop fed to the model, after resizing the short side to
      # min_resize (0 = round(image_size * 8 / 7)).
      "image_size": 224,
      "min_resize": 0,
      # Train-only augmentation. scale_jitter = (low, high) multiplies the
      # resize by U(low, high) before the crop; (1.0, 1.0) is off.
      "scale_jitter": (1.0, 1.0),
      "random_flip": True,
      "color_jitter": 0.0,  # Strength in [0, 1]; 0 = off.
      "randaugment_num_layers": 0,  # 0 = off.
      "randaugment_magnitude": 9,  # RandAugment's 0..10 scale.
      "normalization": "zero_centered",  # Or 'imagenet' (mean/std).
      # Eval views: clips spread evenly in time x spatial crops (1 = centre,
      # 3 = start/centre/end of the long side).
      "num_test_clips": 1,
      "num_test_crops": 1,
  }


def synthetic_config() -> ml_collections.ConfigDict:
  """Default config of the ``synthetic`` dataset (no processing fields: clips are made)."""
  return ml_collections.ConfigDict({
      "name": "synthetic",
      "num_frames": 8,
      "image_size": 32,
      "num_classes": 4,
      "num_train": 2048,
      "num_eval": 512,
      "square_size": 6,
      "noise": 0.1,
      "shuffle_frames": False,
      "seed": 0,
  })


def tfrecord_config() -> ml_collections.ConfigDict:
  """Default config of the ``tfrecord`` dataset."""
  return ml_collections.ConfigDict({
      "name": "tfrecord",
      # Patterns are relative to data_dir unless absolute.
      "data_dir": "",
      "train_pattern": "train.tfrecord*",
      "eval_pattern": "test.tfrecord*",
      # 0 = take classes from class_names_file, else from the converter's
      # metadata.json / classes.txt next to the shards.
      "num_classes": 0,
      "class_names_file": "",
      # Expected example counts (0 = whatever the files hold). A mismatch
      # is logged; the records found are used.
      "num_train": 0,
      "num_eval": 0,
      # 'index': clip/label/index; 'verb_noun': the action verb * num_nouns + noun
      # of the records' verb and noun labels (EPIC-KITCHENS-100, --format=ek100).
      "label_source": "index",
      **processing_fields(),
  })


def tfds_config() -> ml_collections.ConfigDict:
  """Default config of the ``tfds`` dataset."""
  return ml_collections.ConfigDict({
      "name": "tfds",
      "builder": "ucf101",  # Name, optionally 'name/config:version'.
      "data_dir": "",  # '' = TFDS's default data dir.
      "manual_dir": "",  # Manually downloaded files (with download=True).
      "download": False,  # Prepare the dataset if it is not there yet.
      "train_split": "train",
      "eval_split": "test",
      "video_key": "video",
      "label_key": "label",
      **processing_fields(),
  })


def named_config(name: str) -> ml_collections.ConfigDict:
  """Default config of ``ucf101`` / ``hmdb51``: raw folder, TFRecords or TFDS (``data.named``)."""
  fields = processing_fields()
  fields["scale_jitter"] = (0.9, 1.33)
  return ml_collections.ConfigDict({
      "name": name,
      "format": "tfrecord",
      "data_dir": "",
      "split": 1,
      # '' = <data_dir>/<standard folder> (format='folder' only).
      "splits_dir": "",
      # format='tfrecord': shard names relative to data_dir; class names
      # come from the converter's metadata unless a file is given.
      "train_pattern": "train.tfrecord*",
      "eval_pattern": "test.tfrecord*",
      "class_names_file": "",
      **fields,
  })


def resolve_path(path: str, data_dir: str) -> str:
  """``path`` joined to ``data_dir`` unless it is absolute or has a scheme."""
  if not path or not data_dir or os.path.isabs(path) or "://" in path:
    return path
  return os.path.join(data_dir, path)


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
  """Validated processing settings (see :func:`processing_fields`)."""

  num_frames: int
  frame_stride: int
  image_size: int
  min_resize: int
  scale_jitter: tuple[float, float]
  random_flip: bool
  color_jitter: float
  randaugment_num_layers: int
  randaugment_magnitude: float
  normalization: str
  num_test_clips: int
  num_test_crops: int
  frame_sampling: str = "strided"

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> "ProcessSpec":
    """Reads and checks the processing fields of a dataset config (ValueError names the field)."""
    casts = {"int": int, "float": float, "bool": bool, "str": str}
    values = {f.name: casts[f.type](cfg[f.name]) for f in dataclasses.fields(cls)
              if f.type in casts}
    values["scale_jitter"] = tuple(float(v) for v in cfg.scale_jitter)
    values["min_resize"] = values["min_resize"] or round(cfg.image_size * AUTO_RESIZE_RATIO)
    spec = cls(**values)
    spec.check()
    return spec

  def check(self) -> None:
    """Raises ValueError naming the first invalid ``dataset.<field>``."""
    rules = [
        (self.num_frames >= 1, "num_frames", "must be >= 1"),
        (self.frame_stride >= 1, "frame_stride", "must be >= 1"),
        (self.frame_sampling in FRAME_SAMPLINGS, "frame_sampling",
         f"must be one of {FRAME_SAMPLINGS}"),
        (self.image_size >= 1, "image_size", "must be >= 1"),
        (self.min_resize >= self.image_size, "min_resize",
         f"must be 0 (auto) or >= image_size={self.image_size}"),
        (len(self.scale_jitter) == 2 and
         0 < self.scale_jitter[0] <= self.scale_jitter[1], "scale_jitter",
         "must be (low, high) with 0 < low <= high; (1.0, 1.0) is off"),
        (0.0 <= self.color_jitter <= 1.0, "color_jitter",
         "must be in [0, 1]"),
        (self.randaugment_num_layers >= 0, "randaugment_num_layers",
         "must be >= 0 (0 = off)"),
        (0.0 <= self.randaugment_magnitude <= 10.0, "randaugment_magnitude",
         "must be in [0, 10]"),
        (self.normalization in NORMALIZATIONS, "normalization",
         f"must be one of {NORMALIZATIONS}"),
        (self.num_test_clips >= 1, "num_test_clips", "must be >= 1"),
        (self.num_test_crops in TEST_CROPS, "num_test_crops",
         f"must be one of {TEST_CROPS}"),
    ]
    for ok, field, message in rules:
      if not ok:
        value = getattr(self, field)
        raise ValueError(f"dataset.{field}: {message}, got {value!r}")
    if self.frame_sampling == "segments" and self.frame_stride != 1:
      raise ValueError(f"dataset.frame_stride={self.frame_stride} cannot take effect with "
                       "dataset.frame_sampling='segments' (one frame per segment): set it to 1")

  @property
  def num_views(self) -> int:
    """Test views per video: ``num_test_clips * num_test_crops``."""
    return self.num_test_clips * self.num_test_crops

  @property
  def clip_shape(self) -> tuple[int, int, int, int]:
    """``(T, H, W, C)`` of one processed clip."""
    return (self.num_frames, self.image_size, self.image_size, 3)
