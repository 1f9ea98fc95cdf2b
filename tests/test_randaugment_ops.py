"""Each RandAugment op and colour jitter against numpy / PIL references.

Clips are float32 ``[T, H, W, 3]`` on the 0..255 scale, the same scale as PIL's
``ImageOps`` / ``ImageEnhance`` that timm's and tensorflow-models' RandAugment
use. The clip-level ops (autocontrast, equalize) work on the statistics of
the whole clip, which for PIL is the frames stacked into one tall image.
Every op test also asserts that the op moves the clip by a clear margin, so
an op silently replaced by the identity fails.
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from vivit_knn.data import augment

# The dispatch order of `augment._apply_op` (the RandAugment paper's list).
OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize",
       "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
       "translate_y")
T, H, W = 3, 20, 24
FILL = 128.0
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, PIL's convert("L")


def _clip(seed=0, low=0, high=256):
  """Integer-valued float32 clip whose frames have different intensity ranges."""
  rng = np.random.default_rng(seed)
  x = rng.integers(low, high, (T, H, W, 3)).astype(np.float64)
  # Frame t is squeezed and lifted by 40*t, so clip and frame statistics differ.
  x = np.round(0.6 * x + 40.0 * np.arange(T)[:, None, None, None])
  return np.clip(x, 0, 255).astype(np.float32)


def _op(name, x, level, sign=1.0):
  out = augment._apply_op(tf.constant(x, tf.float32), tf.constant(OPS.index(name)),
                          tf.constant(level, tf.float32), tf.constant(sign, tf.float32))
  return out.numpy().astype(np.float64)


def _moved(got, x, margin):
  """The op changed the clip by more than `margin` on average (so it is not the identity)."""
  change = np.abs(got - x).mean()
  assert change > margin, f"mean change {change:.2f} <= {margin}"


def _tall(x):
  """The clip's frames stacked vertically as one uint8 PIL image."""
  return Image.fromarray(x.reshape(-1, x.shape[2], 3).astype(np.uint8))


def _from_tall(image, shape):
  return np.asarray(image, np.float64).reshape(shape)


def _per_frame_pil(x, fn):
  return np.stack([np.asarray(fn(Image.fromarray(f.astype(np.uint8))), np.float64) for f in x])


def _warp(x, source_coords):
  """Bilinear resampling: output pixel (col, row) reads the input at `source_coords(col, row)`.

  Coordinates are pixel indices; a source outside the image gives FILL. Pixels
  whose source lies within one pixel outside the image (where the bilinear
  footprint straddles the edge) are NaN: the reference leaves them open.
  """
  t, h, w, _ = x.shape
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                           indexing="ij")
  sx, sy = source_coords(cols, rows)
  inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
  outside = (sx <= -1) | (sx >= w) | (sy <= -1) | (sy >= h)
  x0 = np.clip(np.floor(sx), 0, w - 1).astype(int)
  y0 = np.clip(np.floor(sy), 0, h - 1).astype(int)
  x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
  fx, fy = (sx - x0)[None, ..., None], (sy - y0)[None, ..., None]
  top = (1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1]
  bottom = (1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]
  out = np.where(inside[None, ..., None], (1 - fy) * top + fy * bottom, np.nan)
  return np.where(outside[None, ..., None], FILL, out)


def _assert_warp(got, want, min_known=0.7):
  known = ~np.isnan(want)
  assert known.mean() > min_known
  np.testing.assert_allclose(got[known], want[known], atol=1e-2)


def test_identity_returns_the_clip():
  x = _clip()
  np.testing.assert_array_equal(_op("identity", x, 0.9, -1.0), x)


def test_autocontrast_stretches_each_channel_over_the_clip():
  x = _clip(1)
  got = _op("autocontrast", x, 0.5)
  flat = x.reshape(-1, 3).astype(np.float64)
  low, high = flat.min(0), flat.max(0)
  np.testing.assert_allclose(got, (x - low) * 255.0 / (high - low), atol=1e-3)
  _moved(got, x, 10.0)
  # PIL truncates its lookup table to integers.
  pil = _from_tall(ImageOps.autocontrast(_tall(x)), x.shape)
  np.testing.assert_allclose(got, pil, atol=1.0)
  # Clip-level: the darkest frame is not stretched on its own.
  frame0 = x[0].reshape(-1, 3)
  per_frame = (x[0] - frame0.min(0)) * 255.0 / np.ptp(frame0, axis=0)
  assert np.abs(got[0] - per_frame).mean() > 5.0


def test_autocontrast_of_a_flat_channel_keeps_it():
  x = _clip(2)
  x[..., 1] = 77.0
  got = _op("autocontrast", x, 0.5)
  np.testing.assert_array_equal(got[..., 1], 77.0)
  assert got[..., 0].min() == 0.0 and got[..., 0].max() == pytest.approx(255.0)


def test_equalize_matches_pillow_over_the_whole_clip():
  x = _clip(3, 40, 180)
  got = _op("equalize", x, 0.5)
  np.testing.assert_array_equal(got, _from_tall(ImageOps.equalize(_tall(x)), x.shape))
  _moved(got, x, 10.0)
  per_frame = _per_frame_pil(x, ImageOps.equalize)
  assert np.abs(got - per_frame).mean() > 5.0


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rotate_turns_the_clip_about_its_centre(sign):
  x, level = _clip(4), 0.5
  degrees = sign * 30.0 * level
  got = _op("rotate", x, level, sign)
  theta = np.deg2rad(degrees)
  cx, cy = (W - 1) / 2.0, (H - 1) / 2.0

  def source(c, r):
    # Output pixel at angle a from the centre shows the input pixel at angle a + theta
    # (y down): the image turns counter-clockwise on screen for positive degrees, as PIL's.
    dx, dy = c - cx, r - cy
    return (cx + np.cos(theta) * dx - np.sin(theta) * dy,
            cy + np.sin(theta) * dx + np.cos(theta) * dy)

  _assert_warp(got, _warp(x.astype(np.float64), source))
  _moved(got, x, 20.0)
  # PIL's rotate (bilinear, grey fill) agrees away from the corners up to its rounding.
  pil = _per_frame_pil(x, lambda im: im.rotate(degrees, resample=Image.BILINEAR,
                                               fillcolor=(128, 128, 128)))
  np.testing.assert_allclose(got[:, 4:-4, 4:-4], pil[:, 4:-4, 4:-4], atol=1.0)


def test_solarize_inverts_pixels_at_or_above_the_threshold():
  x, level = _clip(5), 0.5
  threshold = 256.0 - 256.0 * level  # stronger with the level: 256 (none) .. 0 (all)
  got = _op("solarize", x, level)
  np.testing.assert_array_equal(got, np.where(x >= threshold, 255.0 - x, x))
  np.testing.assert_array_equal(got, _from_tall(ImageOps.solarize(_tall(x), 128), x.shape))
  _moved(got, x, 10.0)
  np.testing.assert_array_equal(_op("solarize", x, 0.0), x)


@pytest.mark.parametrize("level,bits", [(0.5, 6), (1.0, 4)])
def test_posterize_keeps_the_top_bits(level, bits):
  x = _clip(6)
  got = _op("posterize", x, level)
  np.testing.assert_array_equal(got, _from_tall(ImageOps.posterize(_tall(x), bits), x.shape))
  step = 2.0 ** (8 - bits)
  # Non-integer pixels (after a resize) are floored to the same levels.
  xf = x + 0.7
  np.testing.assert_array_equal(_op("posterize", xf, level), np.floor(xf / step) * step)
  _moved(got, x, step / 2 - 1.0)


def _enhance_factor(level, sign):
  return 1.0 + sign * 0.9 * level  # timm's increasing enhance: 0.1 .. 1.9


def _gray(x):
  return (x @ LUMA)[..., None]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_color_blends_with_the_luma_image(sign):
  x, level = _clip(7), 0.8
  f = _enhance_factor(level, sign)
  got = _op("color", x, level, sign)
  np.testing.assert_allclose(got, np.clip(_gray(x) + f * (x - _gray(x)), 0, 255), atol=1e-2)
  pil = _per_frame_pil(x, lambda im: ImageEnhance.Color(im).enhance(f))
  np.testing.assert_allclose(got, pil, atol=1.5)
  _moved(got, x, 10.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_contrast_blends_with_each_frames_mean_luma(sign):
  x, level = _clip(8), 0.8
  f = _enhance_factor(level, sign)
  got = _op("contrast", x, level, sign)
  mean = _gray(x).mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(got, np.clip(mean + f * (x - mean), 0, 255), atol=1e-2)
  pil = _per_frame_pil(x, lambda im: ImageEnhance.Contrast(im).enhance(f))
  np.testing.assert_allclose(got, pil, atol=1.5)
  _moved(got, x, 10.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_brightness_scales_towards_black(sign):
  x, level = _clip(9), 0.8
  f = _enhance_factor(level, sign)
  got = _op("brightness", x, level, sign)
  np.testing.assert_allclose(got, np.clip(f * x, 0, 255), atol=1e-3)
  pil = _per_frame_pil(x, lambda im: ImageEnhance.Brightness(im).enhance(f))
  np.testing.assert_allclose(got, pil, atol=1.0)
  _moved(got, x, 20.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sharpness_blends_with_pils_smooth_filter(sign):
  x, level = _clip(10), 0.8
  f = _enhance_factor(level, sign)
  got = _op("sharpness", x, level, sign)
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float64) / 13.0
  smooth = x.astype(np.float64).copy()  # PIL leaves the one-pixel border unfiltered
  for dy in range(3):
    for dx in range(3):
      if (dy, dx) == (0, 0):
        smooth[:, 1:-1, 1:-1] = 0.0
      smooth[:, 1:-1, 1:-1] += kernel[dy, dx] * x[:, dy:H - 2 + dy, dx:W - 2 + dx]
  np.testing.assert_allclose(got, np.clip(smooth + f * (x - smooth), 0, 255), atol=1e-2)
  pil = _per_frame_pil(x, lambda im: ImageEnhance.Sharpness(im).enhance(f))
  np.testing.assert_allclose(got, pil, atol=1.5)  # PIL rounds the filter and the blend
  _moved(got, x, 5.0)
  # The border is untouched at any factor.
  np.testing.assert_array_equal(got[:, 0], x[:, 0])
  np.testing.assert_array_equal(got[:, :, -1], x[:, :, -1])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_shear_x_reads_columns_shifted_by_shear_times_row(sign):
  x, level = _clip(11), 0.5
  shear = sign * 0.3 * level
  got = _op("shear_x", x, level, sign)
  _assert_warp(got, _warp(x.astype(np.float64), lambda c, r: (c + shear * r, r)))
  _moved(got, x, 20.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_shear_y_reads_rows_shifted_by_shear_times_column(sign):
  x, level = _clip(12), 0.5
  shear = sign * 0.3 * level
  got = _op("shear_y", x, level, sign)
  _assert_warp(got, _warp(x.astype(np.float64), lambda c, r: (c, r + shear * c)))
  _moved(got, x, 20.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_translate_x_moves_by_a_fraction_of_the_width(sign):
  x, level = _clip(13), 0.5
  shift = sign * 0.3 * level * W  # 3.6 pixels: bilinear between columns
  got = _op("translate_x", x, level, sign)
  _assert_warp(got, _warp(x.astype(np.float64), lambda c, r: (c + shift, r)))
  _moved(got, x, 20.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_translate_y_moves_by_a_fraction_of_the_height(sign):
  x, level = _clip(14), 0.5
  shift = sign * 0.3 * level * H
  got = _op("translate_y", x, level, sign)
  _assert_warp(got, _warp(x.astype(np.float64), lambda c, r: (c, r + shift)))
  _moved(got, x, 20.0)


def test_randaugment_applies_one_op_to_the_whole_clip():
  x = _clip(15)
  same = np.repeat(x[:1], T, axis=0)
  candidates = {(name, sign): _op(name, x, 0.9, sign) for name in OPS for sign in (1.0, -1.0)}
  drawn = set()
  for seed in range(40):
    seed = tf.constant([seed, 7], tf.int64)
    out = augment.randaugment(tf.constant(x), 1, 9.0, seed).numpy()
    matches = [key for key, want in candidates.items() if np.allclose(out, want, atol=1e-3)]
    assert matches, "randaugment's output is none of its ops"
    drawn.add(matches[0][0])
    # Two layers on a clip of identical frames leave the frames identical.
    twice = augment.randaugment(tf.constant(same), 2, 9.0, seed).numpy()
    np.testing.assert_allclose(twice, np.repeat(twice[:1], T, axis=0), atol=1e-3)
  assert len(drawn) >= 10


# Colour jitter ---------------------------------------------------------------

# NTSC RGB -> YIQ (column vectors: yiq = M @ rgb).
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _jitter_draws(strength, seed):
  """The documented draws: one stateless split into 4, brightness/contrast/saturation
  factors in 1 +- 0.4*strength, hue in +-0.1*strength turns."""
  seeds = tf.random.experimental.stateless_split(tf.constant(seed, tf.int64), 4)
  amount = 0.4 * strength
  factors = [float(tf.random.stateless_uniform([], seeds[i], 1.0 - amount, 1.0 + amount))
             for i in range(3)]
  hue = float(tf.random.stateless_uniform([], seeds[3], -0.1 * strength, 0.1 * strength))
  return factors + [hue]


def _np_jitter(x, brightness, contrast, saturation, hue):
  """Brightness, contrast, saturation, hue in that order, clipped once at the end."""
  y = brightness * x.astype(np.float64)
  mean = _gray(y).mean(axis=(1, 2), keepdims=True)
  y = mean + contrast * (y - mean)
  y = _gray(y) + saturation * (y - _gray(y))
  yiq = y @ _YIQ.T
  angle = 2 * np.pi * hue
  i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
  yiq[..., 1] = np.cos(angle) * i - np.sin(angle) * q
  yiq[..., 2] = np.sin(angle) * i + np.cos(angle) * q
  return np.clip(yiq @ np.linalg.inv(_YIQ).T, 0, 255)


@pytest.mark.parametrize("strength,seed", [(1.0, (5, 6)), (1.0, (1, 2)), (0.5, (3, 9))])
def test_color_jitter_matches_the_documented_formulas(strength, seed):
  x = _clip(16)
  draws = _jitter_draws(strength, seed)
  amount = 0.4 * strength
  assert all(abs(f - 1.0) <= amount for f in draws[:3]) and abs(draws[3]) <= 0.1 * strength
  got = augment.color_jitter(tf.constant(x), strength, tf.constant(seed, tf.int64)).numpy()
  np.testing.assert_allclose(got, _np_jitter(x, *draws), atol=2e-2)
  _moved(got, x, 2.0)


def test_color_jitter_strength_zero_is_the_identity():
  x = _clip(17)
  got = augment.color_jitter(tf.constant(x), 0.0, tf.constant([4, 2], tf.int64)).numpy()
  np.testing.assert_allclose(got, x, atol=1e-3)


def test_color_jitter_is_one_draw_per_clip_and_seed_dependent():
  x = _clip(18)
  seed = tf.constant([11, 3], tf.int64)
  got = augment.color_jitter(tf.constant(x), 1.0, seed).numpy()
  np.testing.assert_array_equal(
      got, augment.color_jitter(tf.constant(x), 1.0, seed).numpy())
  # Every frame gets the same factors: jittering one frame alone with the same seed
  # gives that frame of the clip.
  for t in range(T):
    alone = augment.color_jitter(tf.constant(x[t:t + 1]), 1.0, seed).numpy()[0]
    np.testing.assert_allclose(got[t], alone, atol=1e-3)
  others = [augment.color_jitter(tf.constant(x), 1.0, tf.constant([s, 3], tf.int64)).numpy()
            for s in (12, 13)]
  for other in others:
    assert np.abs(other - got).mean() > 2.0
