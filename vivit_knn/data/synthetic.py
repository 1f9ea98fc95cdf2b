"""Synthetic moving-square clips whose label can only be read from frame order.

A clip of ``T`` frames has two phases of ``T / 2``: a bright square moves
horizontally along a random row, then vertically along a random column. The
label is ``2 * horizontal + vertical`` (0 = left / up, 1 = right / down); with
``num_classes=2`` one horizontal phase spans all frames. Either direction visits
the same positions ``{m + k * speed}``, ``m`` uniform, so the unordered frames
have the same distribution in every class: a model that ignores frame order is
at chance. ``shuffle_frames=True`` (the control) permutes every clip's frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from vivit_knn import keys
from vivit_knn.data import base, options

NUM_CHANNELS = 3
MIN_SPEED = 2
SPLIT_IDS = {"train": 0, "eval": 1}
CLASS_NAMES = {4: ("left_up", "left_down", "right_up", "right_down"), 2: ("left", "right")}
# Stream id used to derive the frame-permutation generator from an example's
# seed, so the permutation never perturbs the draws that define the clip.
_PERMUTATION_STREAM = 1


# The defaults live with the rest of the schema, which loads without TensorFlow.
default_config = options.synthetic_config


def _phase_len(cfg: ml_collections.ConfigDict) -> int:
  return cfg.num_frames // 2 if cfg.num_classes == 4 else cfg.num_frames


def _validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid ``dataset.*`` field."""
  phase_len = _phase_len(cfg)
  # Two start positions at minimum speed; otherwise the start is fixed.
  min_size = cfg.square_size + (phase_len - 1) * MIN_SPEED + 1
  rules = [
      (cfg.num_classes in CLASS_NAMES, "num_classes must be 4 (direction pairs) or 2 "
       f"(horizontal only), got {cfg.num_classes}"),
      (cfg.num_frames >= 4 and not cfg.num_frames % 2,
       f"num_frames must be even and >= 4, got {cfg.num_frames}"),
      (cfg.square_size >= 1, f"square_size must be >= 1, got {cfg.square_size}"),
      (cfg.image_size >= min_size, f"image_size must be >= {min_size} for square_size="
       f"{cfg.square_size} moving {MIN_SPEED} px over {phase_len} frames, got {cfg.image_size}"),
      (0.0 <= cfg.noise < 1.0, f"noise must be in [0, 1), got {cfg.noise}"),
      (cfg.num_train >= 1, f"num_train must be >= 1, got {cfg.num_train}"),
      (cfg.num_eval >= 1, f"num_eval must be >= 1, got {cfg.num_eval}"),
      (cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}"),
  ]
  for ok, message in rules:
    if not ok:
      raise ValueError(f"dataset.{message}")


class SyntheticMotionDataset(base.VideoDataset):
  """Moving-square clips whose class is encoded in the order of frames.

  Example ``i`` of split ``s`` is a pure function of ``(config.seed, s, i)``,
  generated in the tf.data pipeline after shuffling, skipping and host slicing.
  ``config`` sets fields of :func:`default_config`; ValueError names an unknown or invalid one.
  """

  decode_batched = True

  def __init__(self, config: ml_collections.ConfigDict | None = None):
    cfg = keys.overlay_known(config, default_config(), "dataset")
    _validate(cfg)
    self.config = cfg
    self._phase_len = _phase_len(cfg)
    room = cfg.image_size - cfg.square_size
    # At least MIN_SPEED px/frame, else a phase spans at most half of the free
    # range, leaving many start positions.
    self._speed = max(MIN_SPEED, room // (2 * (self._phase_len - 1)))
    self._num_starts = room - (self._phase_len - 1) * self._speed + 1
    self._info = base.DatasetInfo(
        num_classes=cfg.num_classes, class_names=CLASS_NAMES[cfg.num_classes],
        num_train_examples=cfg.num_train, num_eval_examples=cfg.num_eval,
        input_shape=(cfg.num_frames, cfg.image_size, cfg.image_size, NUM_CHANNELS))

  @property
  def info(self) -> base.DatasetInfo:
    """Static description of the dataset."""
    return self._info

  def split_counts(self, split: str) -> dict[str, int | None]:
    """See :meth:`base.VideoDataset.split_counts`; generated clips always read."""
    counts = super().split_counts(split)
    counts["readable"] = counts["listed"]
    return counts

  @property
  def speed(self) -> int:
    """Displacement of the square between consecutive frames, in pixels."""
    return self._speed

  def generate(self, split: str,
               indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``[n, T, H, W, 3]`` clips in [-1, 1] and int32 ``[n]`` labels of ``indices``."""
    cfg = self.config
    split_id = SPLIT_IDS[split]
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    n, t, size, s = len(indices), cfg.num_frames, cfg.image_size, cfg.square_size
    num_classes = cfg.num_classes
    labels = (indices % num_classes).astype(np.int32)
    frame_shape = (t, size, size, NUM_CHANNELS)
    noise_bytes = np.empty((n,) + frame_shape, np.uint8)
    starts = np.empty((n, 2), np.int64)  # Trajectory start per phase.
    fixed = np.empty((n, 2), np.int64)  # Row in phase 1, column in 2.
    for j, i in enumerate(indices):
      rng = np.random.default_rng([cfg.seed, split_id, int(i)])
      starts[j] = rng.integers(self._num_starts, size=2)
      fixed[j] = rng.integers(size - s + 1, size=2)
      # Raw bytes are several times cheaper to draw than floats; 256 noise levels are plenty.
      noise_bytes[j] = np.frombuffer(rng.bytes(noise_bytes[j].size), np.uint8).reshape(frame_shape)
    # Background in [0, noise], mapped to [-1, 1] like the whole clip.
    clips = np.multiply(noise_bytes, np.float32(2.0 * cfg.noise / 255.0), dtype=np.float32)
    clips -= 1.0

    steps = np.arange(self._phase_len) * self._speed
    if num_classes == 4:
      forward_h, forward_v = labels // 2 == 1, labels % 2 == 1
    else:
      forward_h, forward_v = labels == 1, np.zeros(n, bool)
    # Moving right/down walks the trajectory forwards, left/up backwards.
    traj_h = starts[:, :1] + np.where(forward_h[:, None], steps, steps[::-1])
    traj_v = starts[:, 1:] + np.where(forward_v[:, None], steps, steps[::-1])
    if num_classes == 4:
      cols = np.concatenate([traj_h, np.repeat(fixed[:, 1:], self._phase_len, 1)], 1)
      rows = np.concatenate([np.repeat(fixed[:, :1], self._phase_len, 1), traj_v], 1)
    else:
      cols, rows = traj_h, np.repeat(fixed[:, :1], t, 1)
    # Slice assignment beats a broadcast boolean mask by ~5x here.
    for j in range(n):
      for f in range(t):
        r, c = rows[j, f], cols[j, f]
        clips[j, f, r:r + s, c:c + s] = 1.0

    if cfg.shuffle_frames:
      perms = np.empty((n, t), np.int64)
      for j, i in enumerate(indices):
        perms[j] = np.random.default_rng(
            [cfg.seed, split_id, int(i), _PERMUTATION_STREAM]).permutation(t)
      clips = clips[np.arange(n)[:, None], perms]
    return clips, labels

  def _decode_fn(self, split: str):
    shape = (None,) + self._info.input_shape

    def decode(indices):
      inputs, labels = tf.numpy_function(
          lambda idx: self.generate(split, idx), [indices],
          (tf.float32, tf.int32), stateful=False)
      inputs.set_shape(shape)
      labels.set_shape((None,))
      return {"inputs": inputs, "label": labels}

    return decode

  def _train_decode_fn(self, seed: int):
    del seed  # Example i is a function of config.seed alone.
    return self._decode_fn("train")

  def _eval_decode_fn(self):
    return self._decode_fn("eval")
