"""Frame sampling, spatial processors, augmentation and view averaging."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from vivit_knn.data import augment, processors
from vivit_knn.data.options import ProcessSpec, processing_fields
from vivit_knn.data.processors import average_view_logits


def spec(**overrides):
  cfg = ml_collections.ConfigDict(processing_fields())
  cfg.update(overrides)
  return ProcessSpec.from_config(cfg)


def ramp_frames(t=8, h=40, w=60):
  """uint8 frames whose pixel values encode (frame, row, column)."""
  f, y, x = np.meshgrid(np.arange(t), np.arange(h), np.arange(w),
                        indexing="ij")
  return np.stack([f * 20 % 256, y * 4 % 256, x * 4 % 256],
                  -1).astype(np.uint8)


def to_pixels(x):
  return (np.asarray(x) + 1.0) * 127.5


def test_train_indices_are_a_strided_window_inside_the_video():
  rng = np.random.default_rng(0)
  for _ in range(50):
    idx = processors.train_indices(40, 8, 2, rng)
    assert np.all(np.diff(idx) == 2) and idx.min() >= 0 and idx.max() < 40
  starts = {processors.train_indices(40, 8, 2, rng)[0] for _ in range(300)}
  assert starts == set(range(40 - 15 + 1))  # Every fitting start is drawn.


def test_short_videos_loop():
  idx = processors.train_indices(5, 8, 1, np.random.default_rng(1))
  assert len(idx) == 8 and set(idx) == set(range(5))
  np.testing.assert_array_equal(np.diff(idx) % 5, np.ones(7))


def test_test_indices_spread_clips_from_start_to_end():
  idx = processors.test_indices(100, 4, 3, 3).reshape(3, 4)
  np.testing.assert_array_equal(idx[:, 0], [0, 45, 90])
  assert idx[-1, -1] == 99
  np.testing.assert_array_equal(processors.test_indices(100, 4, 3, 1),
                                [45, 48, 51, 54])  # One clip: centred.


def test_train_clip_without_resize_is_an_exact_crop_with_one_flip_per_clip():
  frames = ramp_frames()
  s = spec(num_frames=8, image_size=32, min_resize=40, random_flip=True)
  flips = 0
  for i in range(12):
    out = to_pixels(processors.train_clip(frames, tf.constant([3, i]), s))
    assert out.shape == (8, 32, 32, 3)
    rows = np.round(out[0, :, 0, 1] / 4).astype(int)
    cols = np.round(out[0, 0, :, 2] / 4).astype(int)
    assert np.all(np.diff(rows) == 1)
    flipped = np.all(np.diff(cols) == -1)
    assert flipped or np.all(np.diff(cols) == 1)
    flips += flipped
    for t in range(8):  # Same crop and flip in every frame.
      np.testing.assert_allclose(out[t, ..., 1:], out[0, ..., 1:], atol=1e-3)
      np.testing.assert_allclose(out[t, ..., 0], t * 20, atol=1e-3)
  assert 0 < flips < 12


def test_train_clip_is_a_pure_function_of_the_seed():
  frames = ramp_frames()
  s = spec(num_frames=8, image_size=24, scale_jitter=(0.8, 1.25),
           color_jitter=0.5, randaugment_num_layers=2)
  a = processors.train_clip(frames, tf.constant([1, 2]), s).numpy()
  b = processors.train_clip(frames, tf.constant([1, 2]), s).numpy()
  c = processors.train_clip(frames, tf.constant([1, 3]), s).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.min() >= -1.0 and a.max() <= 1.0


def test_test_views_centre_and_three_crops_along_the_long_side():
  frames = ramp_frames(t=8, h=40, w=60)
  s = spec(num_frames=4, frame_stride=1, image_size=40, min_resize=40,
           num_test_clips=2, num_test_crops=3)
  views = to_pixels(processors.test_views(frames, s))
  assert views.shape == (6, 4, 40, 40, 3)
  first_cols = np.round(views[:, 0, 0, 0, 2] / 4).astype(int)
  np.testing.assert_array_equal(first_cols, [0, 10, 20] * 2)
  # Clip c of the views holds frames c*4 .. c*4+3.
  np.testing.assert_allclose(views[3:, :, 0, 0, 0],
                             np.tile(np.arange(4, 8) * 20, (3, 1)), atol=1e-3)
  centre = to_pixels(processors.test_views(frames[:4], spec(
      num_frames=4, image_size=40, min_resize=40)))
  np.testing.assert_allclose(centre[0], views[1], atol=1e-4)


def test_resize_smallest_then_crop_matches_tf_resize():
  frames = ramp_frames(t=2, h=60, w=90)
  s = spec(num_frames=2, image_size=32, min_resize=40)
  views = to_pixels(processors.test_views(frames, s))[0]
  # 60 px short side -> 40: the 32 px centre crop is a 48 px source window.
  window = frames[:, 6:54, 21:69].astype(np.float32)
  expected = tf.image.resize(window, [32, 32]).numpy()
  np.testing.assert_allclose(views, expected, atol=1e-3)


def test_imagenet_normalisation():
  x = tf.fill([1, 1, 1, 3], 255.0 * 0.485)
  out = processors.normalize(x, "imagenet").numpy()
  assert abs(out[0, 0, 0, 0]) < 1e-5


def test_invalid_processing_field_is_named():
  with pytest.raises(ValueError, match="dataset.num_test_crops"):
    spec(num_test_crops=2)
  with pytest.raises(ValueError, match="dataset.normalization"):
    spec(normalization="minmax")


def test_colour_jitter_changes_every_frame_the_same_way():
  frames = np.repeat(ramp_frames(t=1).astype(np.float32), 4, axis=0)
  out = augment.color_jitter(tf.constant(frames), 1.0,
                             tf.constant([5, 6], tf.int64)).numpy()
  assert not np.allclose(out, frames, atol=1.0)
  for t in range(1, 4):
    np.testing.assert_allclose(out[t], out[0], atol=1e-4)
  assert out.min() >= 0 and out.max() <= 255


def test_hue_and_saturation_matrices_are_identity_at_rest():
  np.testing.assert_allclose(augment._hue_matrix(0.0).numpy(), np.eye(3),
                             atol=1e-5)
  np.testing.assert_allclose(augment._saturation_matrix(1.0).numpy(),
                             np.eye(3), atol=1e-6)
  gray = augment._mix(tf.constant([[[[200.0, 20.0, 20.0]]]]),
                      augment._saturation_matrix(0.0)).numpy()
  assert np.ptp(gray) < 1e-3


def test_equalize_matches_pillow():
  rng = np.random.default_rng(0)
  image = rng.normal(90, 20, (1, 32, 48, 3)).clip(0, 255).astype(np.uint8)
  ours = augment._equalize(tf.constant(image, tf.float32)).numpy()
  ref = np.asarray(ImageOps.equalize(Image.fromarray(image[0])))
  np.testing.assert_array_equal(ours[0].astype(np.uint8), ref)


@pytest.mark.parametrize("op", range(augment.NUM_RANDAUGMENT_OPS))
def test_every_randaugment_op_keeps_shape_and_range(op):
  x = tf.constant(ramp_frames(t=3).astype(np.float32))
  out = augment._apply_op(x, tf.constant(op), 0.7, -1.0).numpy()
  assert out.shape == x.shape and np.isfinite(out).all()
  assert out.min() >= 0 and out.max() <= 255.0 + 1e-3


@pytest.mark.parametrize("xp", [np, jnp])
def test_average_view_logits_equals_manual_mean(xp):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3 * 4, 5)).astype(np.float32)
  manual = np.stack([logits[4 * i:4 * i + 4].mean(0) for i in range(3)])
  np.testing.assert_allclose(average_view_logits(xp.asarray(logits), 4),
                             manual, rtol=1e-6)
  np.testing.assert_allclose(
      average_view_logits(xp.asarray(logits.reshape(3, 4, 5)), 4), manual,
      rtol=1e-6)
  with pytest.raises(ValueError):
    average_view_logits(xp.asarray(logits[:10]), 4)
