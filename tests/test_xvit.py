"""X-ViT: the channel shift (with its boundary zeros), the mixing block, summary tokens, cost."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_timesformer import np_layernorm, np_mha, np_mlp_residual, perturb, to_numpy
from tests.tiny import tiny_config
from vivit_knn import config as config_lib
from vivit_knn.models.registry import build_model
from vivit_knn.models.spacetime_attention import SpaceTimeMixingBlock, shift_frames
from vivit_knn.train.model_cost import model_stats

INPUT = (4, 24, 24, 3)


def np_shift(x, div):
  """The shift written out: `[B, T, N, H, d]`, channels = flattened H*d."""
  b, t, n, h, d = x.shape
  c = x.reshape(b, t, n, h * d)
  fold = (h * d) // div
  out = c.copy()
  for f in range(t):
    out[:, f, :, :fold] = c[:, f + 1, :, :fold] if f + 1 < t else 0.0
    out[:, f, :, fold:2 * fold] = c[:, f - 1, :, fold:2 * fold] if f > 0 else 0.0
  return out.reshape(x.shape)


def np_mixing_block(x, p, div, summary=0):
  """X-ViT block on `[B, T, S, D]`: shifted k/v within each frame (+ summary keys), MLP."""
  b, t, s, d = x.shape
  y = np_layernorm(x, p["LayerNorm_0"])
  kv = y
  if summary:
    logits = np.einsum("rd,btsd->btrs", p["summary_tokens"]["probes"], y) / np.sqrt(d)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    z = np.einsum("btrs,btsd->btrd", w, y).reshape(b, 1, t * summary, d)
    kv = np.concatenate([y, np.repeat(z, t, axis=1)], axis=2)

  def shift(q, k, v):
    if not div:
      return q, k, v
    own = lambda a: np.concatenate([np_shift(a[:, :, :s], div), a[:, :, s:]], axis=2)
    return q, own(k), own(v)

  x = x + np_mha(y, p["MultiHeadDotProductAttention_0"], kv=kv, transform=shift)
  return np_mlp_residual(x, p)


def test_shift_matches_reference_including_boundary_zeros():
  x = np.arange(2 * 3 * 2 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 2, 4) + 1  # no zeros
  got = np.asarray(shift_frames(jnp.asarray(x), 4))
  np.testing.assert_array_equal(got, np_shift(x, 4))
  c = got.reshape(2, 3, 2, 8)
  # C = 8, div 4: channels [0, 2) from t+1, [2, 4) from t-1, [4, 8) unshifted
  assert np.all(c[:, -1, :, :2] == 0) and np.all(c[:, 0, :, 2:4] == 0)
  np.testing.assert_array_equal(c[:, 0, :, :2], x.reshape(2, 3, 2, 8)[:, 1, :, :2])
  np.testing.assert_array_equal(c[:, 2, :, 2:4], x.reshape(2, 3, 2, 8)[:, 1, :, 2:4])
  np.testing.assert_array_equal(c[..., 4:], x.reshape(2, 3, 2, 8)[..., 4:])


@pytest.mark.parametrize("div, summary", [(4, 0), (2, 0), (0, 0), (4, 2)])
def test_mixing_block_equals_numpy_equation(div, summary):
  block = SpaceTimeMixingBlock(mlp_dim=32, num_heads=2, shift_div=div,
                               num_summary_tokens=summary)
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 16))
  p = perturb(block.init(jax.random.key(1), x, True)["params"])
  got = block.apply({"params": p}, x, True)
  want = np_mixing_block(np.asarray(x, np.float64), to_numpy(p), div, summary)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_queries_are_not_shifted():
  """Only k and v move: changing frame 0 leaves frame 2's output alone after one block."""
  block = SpaceTimeMixingBlock(mlp_dim=32, num_heads=2, shift_div=4)
  x = jax.random.normal(jax.random.key(0), (1, 3, 5, 16))
  p = perturb(block.init(jax.random.key(1), x, True)["params"])
  a = block.apply({"params": p}, x, True)
  b = block.apply({"params": p}, x.at[:, 0].add(jax.random.normal(jax.random.key(2), x[:, 0].shape)), True)
  changed = [not np.allclose(a[:, f], b[:, f], atol=1e-6) for f in range(3)]
  assert changed == [True, True, False]


def xvit_config(attention_type="space_time_mixing", **model):
  config = tiny_config("spacetime", knn=False)  # one encoder: no factorised-encoder keys
  m = config.model
  m.name, m.attention_type, m.patch_size, m.classifier = "xvit", attention_type, (8, 8, 1), "token"
  m.num_layers = 2
  m.xvit_div = 4
  for k, v in model.items():
    m[k] = v
  config_lib.check_model(m, INPUT)
  return config


def test_param_tree_names():
  model = build_model(xvit_config(num_summary_tokens=2).model, 5)
  x = jnp.zeros((1,) + INPUT)
  p = model.init(jax.random.key(0), x)["params"]
  assert set(p) == {"embedding", "cls", "Transformer", "cls_TemporalTransformer",
                    "TemporalTransformer", "pre_logits", "output_projection"}
  assert set(p["Transformer"]) == {"posembed_input", "time_embed", "encoderblock_0",
                                   "encoderblock_1", "encoder_norm"}
  assert set(p["Transformer"]["encoderblock_0"]) == {
      "LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0",
      "summary_tokens"}
  assert set(p["TemporalTransformer"]) == {"encoderblock_0", "encoder_norm"}
  assert p["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 10, 16)
  assert not np.any(np.asarray(p["cls_TemporalTransformer"]))
  assert not np.any(np.asarray(p["output_projection"]["kernel"]))


def test_space_only_ignores_frame_order_and_mixing_does_not():
  perm = jnp.array([3, 1, 0, 2])
  for attention_type, invariant in (("space_only", True), ("space_time_mixing", False)):
    model = build_model(xvit_config(attention_type).model, 5)
    x = jax.random.normal(jax.random.key(1), (2,) + INPUT)
    p = perturb(model.init(jax.random.key(0), x)["params"], scale=0.1)
    a, _ = model.apply({"params": p}, x)
    b, _ = model.apply({"params": p}, x[:, perm])
    assert np.allclose(a, b, atol=1e-5) == invariant, attention_type


def test_cost_equals_space_only_and_is_linear_in_frames():
  shape = lambda t: (t, 64, 64, 3)
  mixing = xvit_config(hidden_size=64, num_heads=4, mlp_dim=128).model
  space = xvit_config("space_only", hidden_size=64, num_heads=4, mlp_dim=128).model
  f8, f16 = (model_stats(mixing, shape(t), 5)["xla_flops"] for t in (8, 16))
  assert model_stats(space, shape(8), 5)["xla_flops"] == pytest.approx(f8, rel=0.005)
  assert f16 / f8 == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize("mutate, field", [
    (lambda m: m.update(xvit_div=1), r"model\.xvit_div"),
    (lambda m: m.update(xvit_div=3), r"model\.xvit_div"),
    (lambda m: m.update(num_summary_tokens=-1), r"model\.num_summary_tokens"),
    (lambda m: m.update(head_layers=0), r"model\.head_layers"),
    (lambda m: m.update(attention_type="divided_space_time"), r"model\.attention_type"),
    (lambda m: m.attention.update(kind="knn", knn_k=11), r"model\.attention\.knn_k"),
])
def test_bad_xvit_configs_name_the_field(mutate, field):
  config = xvit_config()
  mutate(config.model)
  with pytest.raises(ValueError, match=field):
    config_lib.check_model(config.model, INPUT)


def test_summary_tokens_count_as_keys_for_knn():
  config = xvit_config(num_summary_tokens=2)
  config.model.attention.update(kind="knn", knn_k=18)  # CLS + 9 patches + 4 frames x 2 summaries
  config_lib.check_model(config.model, INPUT)
  config.model.attention.knn_k = 19
  with pytest.raises(ValueError, match=r"model\.attention\.knn_k.*18 tokens"):
    config_lib.check_model(config.model, INPUT)

