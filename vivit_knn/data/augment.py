"""Clip-level photometric and geometric augmentation (colour jitter, RandAugment).

Clips are float32 ``[T, H, W, 3]`` in [0, 255]. Every random choice is drawn once
per clip: a change that flickered between frames would be a motion cue. The
colour changes, all linear in RGB, are applied as one 3x3 matrix plus a
per-frame offset (one pass, no RGB->HSV round trip).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_FILL = 128.0
NUM_RANDAUGMENT_OPS = 14


def _mix(x: tf.Tensor, matrix: tf.Tensor, offset=None) -> tf.Tensor:
  """``clip(x @ matrix + offset)`` with ``offset`` broadcast from ``[T, 3]``."""
  shape = tf.shape(x)
  y = tf.reshape(tf.matmul(tf.reshape(x, [-1, 3]), matrix), shape)
  if offset is not None:
    y += offset[:, None, None, :]
  return tf.clip_by_value(y, 0.0, 255.0)


def _saturation_matrix(factor) -> tf.Tensor:
  """Blend with the luma image: ``f * I + (1 - f) * luma 1^T``."""
  luma = tf.constant(np.outer(_LUMA, np.ones(3, np.float32)))
  return factor * tf.eye(3) + (1.0 - factor) * luma


def _hue_matrix(turns) -> tf.Tensor:
  """Rotation of the chroma plane (YIQ) by ``turns`` of a full circle."""
  angle = 2.0 * math.pi * turns
  cos, sin = tf.cos(angle), tf.sin(angle)
  rotation = tf.stack([tf.stack([1.0, 0.0, 0.0]),
                       tf.stack([0.0, cos, -sin]),
                       tf.stack([0.0, sin, cos])])
  to_yiq = tf.constant(_RGB_TO_YIQ)
  # Row-vector convention: x @ M applies YIQ, rotates, then goes back.
  return tf.transpose(tf.linalg.inv(to_yiq) @ rotation @ to_yiq)


def _frame_luma_mean(x: tf.Tensor) -> tf.Tensor:
  """Mean luma of each frame, broadcast to ``[T, 3]``."""
  mean_rgb = tf.reduce_mean(x, axis=[1, 2])
  return tf.tile(tf.matmul(mean_rgb, tf.constant(_LUMA)[:, None]), [1, 3])


def color_jitter(x: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast, saturation and hue jitter of one clip.

  ``strength`` scales torchvision's usual ranges (0.4, 0.4, 0.4, 0.1); the
  four changes are applied in that order, clipping once at the end.
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)
  amount = 0.4 * strength

  def factor(s):
    return tf.random.stateless_uniform([], s, 1.0 - amount, 1.0 + amount)

  brightness, contrast, saturation = (factor(s) for s in tf.unstack(seeds[:3]))
  hue = tf.random.stateless_uniform([], seeds[3], -0.1 * strength, 0.1 * strength)
  colour = _saturation_matrix(saturation) @ _hue_matrix(hue)
  offset = (1.0 - contrast) * brightness * _frame_luma_mean(x)
  return _mix(x, brightness * contrast * colour, offset @ colour)


def _transform(x: tf.Tensor, matrix) -> tf.Tensor:
  """Applies one projective transform (output -> input coords) to all frames."""
  transforms = tf.cast(tf.stack(matrix)[None], tf.float32)
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=x, transforms=transforms, output_shape=tf.shape(x)[1:3],
      fill_value=_FILL, interpolation="BILINEAR", fill_mode="CONSTANT")


def _rotate(x, degrees):
  shape = tf.cast(tf.shape(x), tf.float32)
  h, w = shape[1] - 1.0, shape[2] - 1.0
  angle = degrees * math.pi / 180.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  dx = (w - (cos * w - sin * h)) / 2.0
  dy = (h - (sin * w + cos * h)) / 2.0
  return _transform(x, [cos, -sin, dx, sin, cos, dy, 0.0, 0.0])


def _autocontrast(x):
  channels = tf.transpose(tf.reshape(x, [-1, 3]))  # Extremes over the whole clip.
  low, high = tf.reduce_min(channels, axis=1), tf.reduce_max(channels, axis=1)
  spread = high - low
  gain = tf.where(spread > 0, 255.0 / tf.maximum(spread, 1e-3), 1.0)
  offset = tf.where(spread > 0, low, 0.0)
  return (x - offset) * gain


def _equalize(x):
  """PIL-style histogram equalisation per channel, over the whole clip."""
  values = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.int32)
  keys = values + tf.constant([0, 256, 512])
  hist = tf.reshape(tf.math.bincount(tf.reshape(keys, [-1]), minlength=768,
                                     maxlength=768), [3, 256])
  # Count of the brightest occupied level of each channel.
  last_level = 255 - tf.argmax(tf.reverse(hist, [1]) > 0, axis=1, output_type=tf.int32)
  last = tf.gather(hist, last_level, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last) // 255
  lut = (tf.cumsum(hist, axis=1) - hist + step[:, None] // 2) // tf.maximum(step[:, None], 1)
  lut = tf.where(step[:, None] > 0, tf.clip_by_value(lut, 0, 255), tf.range(256)[None])
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), keys), tf.float32)


def _posterize(x, bits):
  shift = tf.pow(2.0, 8.0 - bits)
  return tf.floor(x / shift) * shift


def _sharpness(x, factor):
  """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered clip.

  As PIL's 3x3 filter, the one-pixel border keeps its values at any factor (a zero-padded
  blur there would darken or brighten a frame around every edge).
  """
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")
  height, width = tf.shape(x)[1], tf.shape(x)[2]
  rows, cols = tf.range(height), tf.range(width)
  interior = ((rows > 0) & (rows < height - 1))[:, None] & (
      (cols > 0) & (cols < width - 1))[None, :]
  smooth = tf.where(interior[None, :, :, None], smooth, x)
  return tf.clip_by_value(smooth + factor * (x - smooth), 0.0, 255.0)


def _apply_op(x, index, level, sign):
  """RandAugment op ``index`` at ``level`` in [0, 1] with direction ``sign``."""
  size = tf.cast(tf.shape(x)[1:3], tf.float32)
  enhance = 1.0 + sign * 0.9 * level
  shear = sign * 0.3 * level
  branches = [
      lambda: x,
      lambda: _autocontrast(x),
      lambda: _equalize(x),
      lambda: _rotate(x, sign * 30.0 * level),
      lambda: tf.where(x >= 256.0 - 256.0 * level, 255.0 - x, x),  # solarize
      lambda: _mix(x, _saturation_matrix(enhance)),
      lambda: _posterize(x, 8.0 - tf.round(4.0 * level)),
      lambda: _mix(x, enhance * tf.eye(3), (1.0 - enhance) * _frame_luma_mean(x)),  # contrast
      lambda: tf.clip_by_value(x * enhance, 0.0, 255.0),
      lambda: _sharpness(x, enhance),
      lambda: _transform(x, [1.0, shear, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
      lambda: _transform(x, [1.0, 0.0, 0.0, shear, 1.0, 0.0, 0.0, 0.0]),
      lambda: _transform(x, [1.0, 0.0, sign * 0.3 * level * size[1], 0.0,
                             1.0, 0.0, 0.0, 0.0]),
      lambda: _transform(x, [1.0, 0.0, 0.0, 0.0, 1.0,
                             sign * 0.3 * level * size[0], 0.0, 0.0]),
  ]
  assert len(branches) == NUM_RANDAUGMENT_OPS
  return tf.switch_case(index, branches)


def randaugment(x: tf.Tensor, num_layers: int, magnitude: float, seed: tf.Tensor) -> tf.Tensor:
  """RandAugment for a clip: ``num_layers`` random ops at ``magnitude``/10.

  Each layer draws its op and direction once for the whole clip.
  """
  level = magnitude / 10.0
  seeds = tf.random.experimental.stateless_split(seed, 2 * num_layers)
  for i in range(num_layers):
    index = tf.random.stateless_uniform([], seeds[2 * i], 0, NUM_RANDAUGMENT_OPS, dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform([], seeds[2 * i + 1]) < 0.5, -1.0, 1.0)
    x = _apply_op(x, index, level, sign)
  return tf.clip_by_value(x, 0.0, 255.0)
