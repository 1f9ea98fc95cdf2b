"""X-ViT's shift inside frame segments (`model.xvit_segment_frames`).

The authors' 16-frame Kinetics X-ViT views its `B*16` frames as `[2B, 8]`
before the shift (`XVIT.NUM_SEGMENTS: 8`), so channels move between frames t
and t+-1 only inside each 8-frame segment, with zeros at segment borders.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_timesformer import np_layernorm, np_mha, np_mlp_residual, perturb, to_numpy
from tests.tiny import tiny_config
from vivit_knn import config as config_lib
from vivit_knn.models.registry import build_model
from vivit_knn.models.spacetime_attention import FrameShift, SpaceTimeMixingBlock, shift_frames

INPUT = (4, 24, 24, 3)  # 4 frames of 3x3 patches of 8x8


def np_segment_shift(x, div, segment=0):
  """The shift on `[B, T, N, C]`: channels [0, C/div) from t+1 and [C/div, 2C/div) from t-1,
  both only from a frame of the same segment (zeros otherwise); 0 = one segment."""
  _, t, _, c = x.shape
  segment = segment or t
  fold = c // div
  out = x.copy()
  for f in range(t):
    same = lambda g: 0 <= g < t and g // segment == f // segment
    out[:, f, :, :fold] = x[:, f + 1, :, :fold] if same(f + 1) else 0.0
    out[:, f, :, fold:2 * fold] = x[:, f - 1, :, fold:2 * fold] if same(f - 1) else 0.0
  return out


def as_heads(x, heads=2):
  """`[B, T, N, C]` -> `[B, T, N, H, C/H]` (channels head-major, as the shift flattens them)."""
  return x.reshape(x.shape[:3] + (heads, x.shape[-1] // heads))


def ramp(shape):
  return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1  # no zeros


def test_segment_shift_matches_reference_and_zeroes_segment_borders():
  x = ramp((2, 8, 3, 8))  # T = 8, C = 8, div 4: [0, 2) from t+1, [2, 4) from t-1
  got = np.asarray(shift_frames(jnp.asarray(as_heads(x)), 4, 4)).reshape(x.shape)
  want = np_segment_shift(x, 4, 4)
  np.testing.assert_array_equal(got, want)
  assert np.all(got[:, 3, :, :2] == 0)  # last frame of segment 0: nothing from frame 4
  assert np.all(got[:, 4, :, 2:4] == 0)  # first frame of segment 1: nothing from frame 3
  assert np.all(got[:, 7, :, :2] == 0) and np.all(got[:, 0, :, 2:4] == 0)  # clip ends
  np.testing.assert_array_equal(got[:, 2, :, :2], x[:, 3, :, :2])  # inside a segment
  np.testing.assert_array_equal(got[:, 5, :, 2:4], x[:, 4, :, 2:4])
  np.testing.assert_array_equal(got[..., 4:], x[..., 4:])


def test_segment_zero_or_whole_clip_is_the_whole_clip_shift():
  x = ramp((2, 8, 3, 8))
  whole = np_segment_shift(x, 4)
  for segment in (0, 8):
    got = np.asarray(shift_frames(jnp.asarray(as_heads(x)), 4, segment)).reshape(x.shape)
    np.testing.assert_array_equal(got, whole)
  np.testing.assert_array_equal(np.asarray(shift_frames(jnp.asarray(as_heads(x)), 4))
                                .reshape(x.shape), whole)
  assert np.any(whole[:, 3, :, :2] != 0) and np.any(whole[:, 4, :, 2:4] != 0)


def test_frame_shift_hook_shifts_k_and_v_per_segment_and_leaves_q_and_summaries():
  own = 3
  q, k, v = (ramp((2, 8, own + 2, 8)) * s for s in (1, 2, 3))  # 2 summary tokens after own
  hook = FrameShift(4, own_tokens=own, segment_frames=4)
  q2, k2, v2 = (np.asarray(a).reshape(q.shape)
                for a in hook(*(jnp.asarray(as_heads(a)) for a in (q, k, v))))
  np.testing.assert_array_equal(q2, q)
  for before, after in ((k, k2), (v, v2)):
    np.testing.assert_array_equal(after[:, :, :own], np_segment_shift(before[:, :, :own], 4, 4))
    np.testing.assert_array_equal(after[:, :, own:], before[:, :, own:])


def np_mixing_block(x, p, div, segment):
  """X-ViT block on `[B, T, S, D]` with the segment shift on k and v (no summary tokens)."""
  y = np_layernorm(x, p["LayerNorm_0"])

  def shift(q, k, v):
    flat = lambda a: np_segment_shift(a.reshape(a.shape[:3] + (-1,)), div, segment).reshape(a.shape)
    return q, flat(k), flat(v)

  x = x + np_mha(y, p["MultiHeadDotProductAttention_0"], transform=shift)
  return np_mlp_residual(x, p)


@pytest.mark.parametrize("segment", [0, 2, 4])
def test_mixing_block_with_segments_equals_numpy_equation(segment):
  block = SpaceTimeMixingBlock(mlp_dim=32, num_heads=2, shift_div=4, segment_frames=segment)
  x = jax.random.normal(jax.random.key(0), (2, 4, 5, 16))
  p = perturb(block.init(jax.random.key(1), x, True)["params"])
  got = block.apply({"params": p}, x, True)
  want = np_mixing_block(np.asarray(x, np.float64), to_numpy(p), 4, segment)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_no_information_crosses_a_segment_border_in_one_block():
  x = jax.random.normal(jax.random.key(0), (1, 4, 5, 16))
  x2 = x.at[:, 2].add(jax.random.normal(jax.random.key(2), x[:, 2].shape))
  for segment, changed in ((0, [False, True, True, True]), (2, [False, False, True, True])):
    block = SpaceTimeMixingBlock(mlp_dim=32, num_heads=2, shift_div=4, segment_frames=segment)
    p = perturb(block.init(jax.random.key(1), x, True)["params"])
    a, b = block.apply({"params": p}, x, True), block.apply({"params": p}, x2, True)
    assert [not np.allclose(a[:, f], b[:, f], atol=1e-6) for f in range(4)] == changed, segment


def xvit_config(**model):
  config = tiny_config("spacetime", knn=False)  # one encoder: no factorised-encoder keys
  m = config.model
  m.name, m.patch_size, m.xvit_div, m.num_layers = "xvit", (8, 8, 1), 4, 2
  for k, v in model.items():
    m[k] = v
  config_lib.check_model(m, INPUT)
  return config


def _logits(config, p=None):
  model = build_model(config.model, 5)
  x = jax.random.normal(jax.random.key(1), (2,) + INPUT)
  if p is None:
    p = perturb(model.init(jax.random.key(0), x)["params"], scale=0.1)
  return model.apply({"params": p}, x)[0], p


def test_model_with_one_segment_of_all_frames_equals_the_default():
  default, p = _logits(xvit_config())
  assert build_model(xvit_config(xvit_segment_frames=4).model, 5).segment_frames == 4
  whole, _ = _logits(xvit_config(xvit_segment_frames=4), p)
  np.testing.assert_array_equal(np.asarray(whole), np.asarray(default))
  halves, _ = _logits(xvit_config(xvit_segment_frames=2), p)
  assert not np.allclose(halves, default, atol=1e-5)


@pytest.mark.parametrize("mutate, field", [
    (lambda m: m.update(xvit_segment_frames=3), r"model\.xvit_segment_frames"),
    (lambda m: m.update(xvit_segment_frames=8), r"model\.xvit_segment_frames"),
    (lambda m: m.update(name="timesformer", attention_type="", xvit_segment_frames=2),
     r"model\.xvit_segment_frames"),
])
def test_bad_segment_configs_name_the_field(mutate, field):
  config = xvit_config()
  mutate(config.model)
  with pytest.raises(ValueError, match=field):
    config_lib.check_model(config.model, INPUT)
