"""DMVR-style processing: the frames that make a clip (picked before decoding), and the inputs.

The spatial processing runs as graph ops on the picked uint8 frames. The crop
window is chosen in source pixels and only the window is resized to
``image_size``: resize-smallest-then-crop at a fraction of the pixels, and no
resize when the frames are stored at the target scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from vivit_knn.data import augment
from vivit_knn.data.options import ProcessSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def clip_span(num_frames: int, stride: int) -> int:
  """Number of consecutive source frames one clip covers."""
  return (num_frames - 1) * stride + 1


def train_indices(num_available: int, num_frames: int, stride: int,
                  rng: np.random.Generator) -> np.ndarray:
  """int64 ``[num_frames]`` indices of one clip starting uniformly where it fits.

  In a video shorter than the clip it starts anywhere and wraps around.
  """
  span = clip_span(num_frames, stride)
  start = rng.integers(0, num_available - span + 1 if num_available >= span else num_available)
  return (start + np.arange(num_frames) * stride) % num_available


def test_indices(num_available: int, num_frames: int, stride: int, num_clips: int) -> np.ndarray:
  """int64 ``[num_clips * num_frames]``: clips starting at ``floor(linspace(0, last, n))``.

  A single clip is centred in time.
  """
  span = clip_span(num_frames, stride)
  last_start = max(num_available - span, 0)
  if num_clips == 1:
    starts = np.array([last_start // 2])
  else:
    starts = np.floor(np.linspace(0, last_start, num_clips)).astype(np.int64)
  offsets = np.arange(num_frames) * stride
  return ((starts[:, None] + offsets[None, :]) % num_available).reshape(-1)


def segment_train_indices(num_available: int, num_frames: int,
                          rng: np.random.Generator) -> np.ndarray:
  """int64 ``[num_frames]``: frame ``x`` is ``x * avg + U{0..avg-1}``, ``avg = n // num_frames``.

  Frames after the last whole segment are never drawn; a video shorter than
  ``num_frames`` gives ``floor(x * n / num_frames)``, drawing nothing.
  """
  positions = np.arange(num_frames, dtype=np.int64)
  average = num_available // num_frames
  if average > 0:
    return positions * average + rng.integers(0, average, size=num_frames)
  return positions * num_available // num_frames


def segment_test_indices(num_available: int, num_frames: int, num_clips: int) -> np.ndarray:
  """int64 ``[num_clips * num_frames]``, one frame per segment for each clip.

  With ``tick = n / num_frames``, frame ``x`` of clip ``c`` is ``int(tick * x +
  tick * ((0.5 + c / num_clips) % 1))``, at most the last frame: two clips take
  the middles and starts of the segments (VideoMAE's SSv2 test set).
  """
  tick = num_available / num_frames
  positions = np.arange(num_frames)
  clips = [np.floor(tick * positions + tick * ((0.5 + c / num_clips) % 1.0))
           for c in range(num_clips)]
  return np.minimum(np.concatenate(clips).astype(np.int64), num_available - 1)


def clip_indices(spec: ProcessSpec, num_available: int, rng: np.random.Generator) -> np.ndarray:
  """int64 ``[num_frames]`` frame indices of one train clip of a video of ``num_available``."""
  if spec.frame_sampling == "segments":
    return segment_train_indices(num_available, spec.num_frames, rng)
  return train_indices(num_available, spec.num_frames, spec.frame_stride, rng)


def view_indices(spec: ProcessSpec, num_available: int) -> np.ndarray:
  """int64 ``[num_test_clips * num_frames]`` indices of the test clips, clip-major."""
  if spec.frame_sampling == "segments":
    return segment_test_indices(num_available, spec.num_frames, spec.num_test_clips)
  return test_indices(num_available, spec.num_frames, spec.frame_stride, spec.num_test_clips)


def normalize(x: tf.Tensor, kind: str) -> tf.Tensor:
  """Maps float pixels in [0, 255] to the model's input range."""
  if kind == "zero_centered":
    return x / 127.5 - 1.0
  if kind == "imagenet":
    mean = tf.constant(IMAGENET_MEAN, tf.float32) * 255.0
    std = tf.constant(IMAGENET_STD, tf.float32) * 255.0
    return (x - mean) / std
  raise ValueError(f"unknown normalization {kind!r}")


def _geometry(frames: tf.Tensor):
  """``(height, width, short side)`` of the frames as int32 scalars."""
  shape = tf.shape(frames)
  height, width = shape[1], shape[2]
  return height, width, tf.minimum(height, width)


def _window(scale, short, size: int) -> tf.Tensor:
  """Side of the square crop in source pixels: ``size / scale`` rounded, kept inside the image."""
  window = tf.cast(tf.round(size / scale), tf.int32)
  return tf.clip_by_value(window, 1, short)


def _crop_resize(frames: tf.Tensor, y0, x0, window, size: int) -> tf.Tensor:
  """``frames[:, y0:y0 + window, x0:x0 + window]`` resized to ``size`` (if not that size)."""
  crop = frames[:, y0:y0 + window, x0:x0 + window]
  x = tf.cond(tf.equal(window, size), lambda: tf.cast(crop, tf.float32),
              lambda: tf.image.resize(crop, [size, size]))
  return tf.ensure_shape(x, [None, size, size, 3])


def train_clip(frames: tf.Tensor, seed: tf.Tensor, spec: ProcessSpec) -> tf.Tensor:
  """float32 ``[T, image_size, image_size, 3]``: uint8 ``frames`` cropped, augmented, normalised.

  ``seed`` (int ``[2]``, stateless) is drawn from once per clip, so every frame
  gets the same crop, flip and colour changes.
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)
  size = spec.image_size
  height, width, short = _geometry(frames)
  scale = spec.min_resize / tf.cast(short, tf.float32)
  low, high = spec.scale_jitter
  if (low, high) != (1.0, 1.0):
    scale *= tf.random.stateless_uniform([], seeds[0], low, high)
  window = _window(scale, short, size)
  corner_seeds = tf.random.experimental.stateless_split(seeds[1], 2)
  y0 = tf.random.stateless_uniform([], corner_seeds[0], 0, height - window + 1, dtype=tf.int32)
  x0 = tf.random.stateless_uniform([], corner_seeds[1], 0, width - window + 1, dtype=tf.int32)
  x = _crop_resize(frames, y0, x0, window, size)
  if spec.random_flip:
    flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
    x = tf.cond(flip, lambda: tf.reverse(x, axis=[2]), lambda: x)
  if spec.color_jitter > 0:
    x = augment.color_jitter(x, spec.color_jitter, seeds[3])
  if spec.randaugment_num_layers > 0:
    x = augment.randaugment(x, spec.randaugment_num_layers, spec.randaugment_magnitude, seeds[4])
  return normalize(x, spec.normalization)


def _test_corners(height, width, window, num_crops: int):
  """Top-left corners ``[(y0, x0)] * num_crops``: centre, or start/centre/end of the long side."""
  centre_y, centre_x = (height - window) // 2, (width - window) // 2
  if num_crops == 1:
    return [(centre_y, centre_x)]
  portrait = height > width
  return [(tf.where(portrait, y, centre_y), tf.where(portrait, centre_x, x))
          for y, x in ((0, 0), (centre_y, centre_x), (height - window, width - window))]


def test_views(frames: tf.Tensor, spec: ProcessSpec) -> tf.Tensor:
  """float32 ``[V, T, size, size, 3]`` test views from the frames of :func:`view_indices`.

  ``V = num_test_clips * num_test_crops``; view ``c * num_test_crops + k`` is clip ``c``,
  crop ``k``.
  """
  t, size = spec.num_frames, spec.image_size
  clips, crops = spec.num_test_clips, spec.num_test_crops
  height, width, short = _geometry(frames)
  window = _window(spec.min_resize / tf.cast(short, tf.float32), short, size)
  views = [_crop_resize(frames, y0, x0, window, size)
           for y0, x0 in _test_corners(height, width, window, crops)]
  x = tf.reshape(tf.stack(views, axis=1), [clips, t, crops, size, size, 3])
  x = tf.reshape(tf.transpose(x, [0, 2, 1, 3, 4, 5]), [clips * crops, t, size, size, 3])
  return normalize(x, spec.normalization)


def average_view_logits(logits: Any, num_views: int) -> Any:
  """``[b, C]`` mean of each video's ``num_views`` view logits (numpy or JAX, jit-safe).

  ``logits`` is ``[b, V, C]``, or ``[b * V, C]`` with a video's ``V`` views adjacent
  (``inputs`` of shape ``[b, V, ...]`` reshaped to ``[b * V, ...]``).
  """
  if logits.ndim == 3:
    if logits.shape[1] != num_views:
      raise ValueError(f"logits of shape {tuple(logits.shape)} have {logits.shape[1]} "
                       f"views, expected {num_views}")
    return logits.mean(axis=1)
  if logits.ndim != 2 or logits.shape[0] % num_views:
    raise ValueError(f"logits must be [b * {num_views}, C] or [b, {num_views}, C], got "
                     f"shape {tuple(logits.shape)}")
  return logits.reshape((logits.shape[0] // num_views, num_views, logits.shape[1])).mean(axis=1)
