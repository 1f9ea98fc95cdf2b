"""DMVR-style processing: the frames that make a clip, and the model inputs.

Frame indices are chosen before any frame is decoded, so readers decode only
the frames they return; :func:`clip_indices` and :func:`view_indices` pick
them as ``dataset.frame_sampling`` says, for every source and for inference.
``'strided'`` (random train windows, evenly spread test clips): a clip of
``num_frames`` frames taken every ``stride`` frames spans
``(num_frames - 1) * stride + 1`` frames; videos shorter than that are looped
(indices wrap around), as in DMVR. ``'segments'`` (TSN-style, as VideoMAE and
CAST sample Something-Something v2): the video is split into ``num_frames``
equal segments and each gives one frame (:func:`segment_train_indices`,
:func:`segment_test_indices`).

The spatial processing runs as tf.data graph ops on the uint8 frames a reader
picked (``[T, H, W, 3]`` for a train clip, ``[clips * T, H, W, 3]`` for the
test views). The crop window is chosen in source pixels and only the window is
resized to ``image_size``: the same result as resize-smallest-then-crop at a
fraction of the pixels, and no resize at all when the frames are stored at the
target scale. The logits of a video's test views are averaged by
:func:`average_view_logits`, which relies on the view layout made here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from vivit_knn.data import augment
from vivit_knn.data.options import ProcessSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Frame sampling.


def clip_span(num_frames: int, stride: int) -> int:
  """Number of consecutive source frames one clip covers."""
  return (num_frames - 1) * stride + 1


def _check_available(num_available: int) -> None:
  if num_available < 1:
    raise ValueError(f"a video needs at least one frame, got {num_available}")


def train_indices(num_available: int, num_frames: int, stride: int,
                  rng: np.random.Generator) -> np.ndarray:
  """Frame indices of one random clip: ``int64 [num_frames]``.

  The window start is uniform over all positions where the clip fits; a
  video shorter than the window starts anywhere and wraps around.
  """
  _check_available(num_available)
  span = clip_span(num_frames, stride)
  if num_available >= span:
    start = rng.integers(0, num_available - span + 1)
  else:
    start = rng.integers(0, num_available)
  return (start + np.arange(num_frames) * stride) % num_available


def test_indices(num_available: int, num_frames: int, stride: int,
                 num_clips: int) -> np.ndarray:
  """Frame indices of ``num_clips`` evenly spread clips, concatenated.

  Returns ``int64 [num_clips * num_frames]``. Clip starts are
  ``linspace(0, last_start, num_clips)`` rounded down; a single clip is
  centred in time.
  """
  _check_available(num_available)
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
  """One random frame from each of ``num_frames`` equal segments: ``int64 [T]``.

  With ``avg = num_available // num_frames`` segments of ``avg`` frames,
  frame ``x`` is ``x * avg + U{0..avg-1}`` (the frames after the last whole
  segment are never drawn). A video shorter than ``num_frames`` gives
  ``floor(x * num_available / num_frames)``: frames repeat, nothing is drawn.
  """
  _check_available(num_available)
  positions = np.arange(num_frames, dtype=np.int64)
  average = num_available // num_frames
  if average > 0:
    return positions * average + rng.integers(0, average, size=num_frames)
  return positions * num_available // num_frames


def segment_test_indices(num_available: int, num_frames: int,
                         num_clips: int) -> np.ndarray:
  """One frame per segment for each of ``num_clips`` clips, concatenated.

  Returns ``int64 [num_clips * num_frames]``. With ``tick = num_available /
  num_frames``, frame ``x`` of clip ``c`` is ``int(tick * x + tick * ((0.5 +
  c / num_clips) % 1))`` (at most the last frame): clip 0 takes the middle of
  every segment and each further clip moves ``tick / num_clips`` later,
  wrapping to the segment's start (two clips: middles and starts, VideoMAE's
  SSv2 test set).
  """
  _check_available(num_available)
  tick = num_available / num_frames
  positions = np.arange(num_frames)
  clips = [np.floor(tick * positions + tick * ((0.5 + c / num_clips) % 1.0))
           for c in range(num_clips)]
  return np.minimum(np.concatenate(clips).astype(np.int64), num_available - 1)


def clip_indices(spec: ProcessSpec, num_available: int,
                 rng: np.random.Generator) -> np.ndarray:
  """Frame indices of one train clip as ``spec.frame_sampling`` says.

  Args:
    spec: Processing settings (``num_frames``, ``frame_stride``,
      ``frame_sampling``).
    num_available: Frames the video has.
    rng: Source of the random window start or segment offsets.

  Returns:
    int64 ``[num_frames]``.
  """
  if spec.frame_sampling == "segments":
    return segment_train_indices(num_available, spec.num_frames, rng)
  return train_indices(num_available, spec.num_frames, spec.frame_stride, rng)


def view_indices(spec: ProcessSpec, num_available: int) -> np.ndarray:
  """Frame indices of the ``num_test_clips`` test clips, concatenated.

  Args:
    spec: Processing settings (``num_frames``, ``frame_stride``,
      ``frame_sampling``, ``num_test_clips``).
    num_available: Frames the video has.

  Returns:
    int64 ``[num_test_clips * num_frames]``, clip-major (the layout
    :func:`test_views` expects).
  """
  if spec.frame_sampling == "segments":
    return segment_test_indices(num_available, spec.num_frames,
                                spec.num_test_clips)
  return test_indices(num_available, spec.num_frames, spec.frame_stride,
                      spec.num_test_clips)


# Spatial processing of the sampled frames.


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
  """Side, in source pixels, of the square that becomes the crop.

  ``size / scale`` rounded to whole pixels (so a crop that needs no resize
  is an exact copy), kept inside the image.
  """
  window = tf.cast(tf.round(size / scale), tf.int32)
  return tf.clip_by_value(window, 1, short)


def _crop_resize(frames: tf.Tensor, y0, x0, window, size: int) -> tf.Tensor:
  """``frames[:, y0:y0 + window, x0:x0 + window]`` resized to ``size``.

  Skips the resize when the window already has the target size, the usual
  case for frames stored at the short side ``min_resize`` and no jitter.
  """
  crop = frames[:, y0:y0 + window, x0:x0 + window]
  x = tf.cond(tf.equal(window, size),
              lambda: tf.cast(crop, tf.float32),
              lambda: tf.image.resize(crop, [size, size]))
  return tf.ensure_shape(x, [None, size, size, 3])


def train_clip(frames: tf.Tensor, seed: tf.Tensor,
               spec: ProcessSpec) -> tf.Tensor:
  """One augmented train clip.

  Args:
    frames: uint8 ``[T, H, W, 3]``.
    seed: int ``[2]`` stateless seed; one draw per clip, so every frame gets
      the same crop, flip and colour changes.
    spec: Processing settings.

  Returns:
    float32 ``[T, image_size, image_size, 3]``, normalised.
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
  y0 = tf.random.stateless_uniform([], corner_seeds[0], 0,
                                   height - window + 1, dtype=tf.int32)
  x0 = tf.random.stateless_uniform([], corner_seeds[1], 0,
                                   width - window + 1, dtype=tf.int32)
  x = _crop_resize(frames, y0, x0, window, size)
  if spec.random_flip:
    flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
    x = tf.cond(flip, lambda: tf.reverse(x, axis=[2]), lambda: x)
  if spec.color_jitter > 0:
    x = augment.color_jitter(x, spec.color_jitter, seeds[3])
  if spec.randaugment_num_layers > 0:
    x = augment.randaugment(x, spec.randaugment_num_layers,
                            spec.randaugment_magnitude, seeds[4])
  return normalize(x, spec.normalization)


def _test_corners(height, width, window, num_crops: int):
  """Top-left corners ``[(y0, x0)] * num_crops``: centre, or start/centre/end.

  Three crops move along the long side, as in the ViViT/DMVR test setup.
  """
  centre_y, centre_x = (height - window) // 2, (width - window) // 2
  if num_crops == 1:
    return [(centre_y, centre_x)]
  portrait = height > width
  corners = []
  for y, x in ((0, 0), (centre_y, centre_x),
               (height - window, width - window)):
    corners.append((tf.where(portrait, y, centre_y),
                    tf.where(portrait, centre_x, x)))
  return corners


def test_views(frames: tf.Tensor, spec: ProcessSpec) -> tf.Tensor:
  """All test views of one video.

  Args:
    frames: uint8 ``[num_test_clips * T, H, W, 3]``, clip-major (the frames
      of :func:`view_indices`).
    spec: Processing settings.

  Returns:
    float32 ``[V, T, image_size, image_size, 3]`` with ``V = num_test_clips
    * num_test_crops``, clip-major (view ``c * num_test_crops + k`` is clip
    ``c``, crop ``k``), normalised.
  """
  t, size = spec.num_frames, spec.image_size
  clips, crops = spec.num_test_clips, spec.num_test_crops
  height, width, short = _geometry(frames)
  window = _window(spec.min_resize / tf.cast(short, tf.float32), short, size)
  views = [_crop_resize(frames, y0, x0, window, size)
           for y0, x0 in _test_corners(height, width, window, crops)]
  x = tf.reshape(tf.stack(views, axis=1), [clips, t, crops, size, size, 3])
  x = tf.reshape(tf.transpose(x, [0, 2, 1, 3, 4, 5]),
                 [clips * crops, t, size, size, 3])
  return normalize(x, spec.normalization)


def average_view_logits(logits: Any, num_views: int) -> Any:
  """Averages the logits of each video's views.

  Works on numpy and JAX arrays alike (only ``reshape``/``mean`` are used), so
  it can run inside a jitted eval step.

  Args:
    logits: ``[b * V, C]`` with the ``V`` views of a video adjacent (the
      layout of ``inputs.reshape(b * V, ...)`` for ``inputs`` of shape
      ``[b, V, ...]``), or ``[b, V, C]``.
    num_views: ``V``.

  Returns:
    ``[b, C]`` mean over views.

  Raises:
    ValueError: if the shape does not match ``num_views``.
  """
  if num_views < 1:
    raise ValueError(f"num_views must be >= 1, got {num_views}")
  if logits.ndim == 3:
    if logits.shape[1] != num_views:
      raise ValueError(
          f"logits of shape {tuple(logits.shape)} have {logits.shape[1]} "
          f"views, expected {num_views}")
    return logits.mean(axis=1)
  if logits.ndim != 2 or logits.shape[0] % num_views:
    raise ValueError(
        f"logits must be [b * {num_views}, C] or [b, {num_views}, C], got "
        f"shape {tuple(logits.shape)}")
  return logits.reshape(
      (logits.shape[0] // num_views, num_views, logits.shape[1])).mean(axis=1)
