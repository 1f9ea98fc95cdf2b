"""ViViT models 1-4: scenic parameter names, shapes, initialisers, k-NN as a config choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import tiny_config
from vivit_knn.models import vivit
from vivit_knn.models.registry import build_model

INPUT = (4, 24, 24, 3)  # tiny_config's clip: T=4 -> t=2, 3x3 patches


def _perturb(params, seed=0):
  """Adds small random noise to every param, so the zero-initialised head sees the trunk."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def _params(model_type, **model_overrides):
  config = tiny_config(model_type)
  for k, v in model_overrides.items():
    config.model[k] = v
  model = build_model(config.model, num_classes=5)
  x = jnp.zeros((2,) + INPUT)
  params = model.init(jax.random.key(0), x)["params"]
  return model, params, x


BLOCK = {"LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"}
ENCODER = lambda n: {f"encoderblock_{i}" for i in range(n)} | {"posembed_input", "encoder_norm"}


def test_spacetime_param_tree_matches_scenic():
  _, p, _ = _params("spacetime")
  assert set(p) == {"embedding", "cls", "Transformer", "output_projection"}
  assert set(p["Transformer"]) == ENCODER(2)
  assert set(p["Transformer"]["encoderblock_0"]) == BLOCK
  assert set(p["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]) == {
      "query", "key", "value", "out"}
  assert set(p["Transformer"]["encoderblock_0"]["MlpBlock_0"]) == {"Dense_0", "Dense_1"}
  # tubelet kernel (t, h, w, C, D); pos-emb over CLS + 2*3*3 tokens
  assert p["embedding"]["kernel"].shape == (2, 8, 8, 3, 16)
  assert p["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 19, 16)
  assert p["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]["query"][
      "kernel"].shape == (16, 2, 8)
  assert p["cls"].shape == (1, 1, 16)


def test_factorized_encoder_param_tree_matches_scenic():
  _, p, _ = _params("factorized_encoder")
  assert set(p) == {"embedding", "cls_SpatialTransformer", "SpatialTransformer",
                    "cls_TemporalTransformer", "TemporalTransformer", "output_projection"}
  assert set(p["SpatialTransformer"]) == ENCODER(1)
  assert set(p["TemporalTransformer"]) == ENCODER(1)
  assert p["SpatialTransformer"]["posembed_input"]["pos_embedding"].shape == (1, 10, 16)
  assert p["TemporalTransformer"]["posembed_input"]["pos_embedding"].shape == (1, 3, 16)


def test_factorized_self_attention_block_names_match_scenic():
  _, p, _ = _params("factorized_self_attention_block")
  assert set(p) == {"embedding", "Transformer", "output_projection"}
  assert set(p["Transformer"]["encoderblock_0"]) == {
      "LayerNorm_time", "MultiHeadDotProductAttention_time", "LayerNorm_space",
      "MultiHeadDotProductAttention_space", "LayerNorm_mlp", "MlpBlock"}


def test_factorized_dot_product_names_match_scenic():
  _, p, _ = _params("factorized_dot_product_attention")
  assert set(p) == {"embedding", "Transformer", "output_projection"}
  assert set(p["Transformer"]["encoderblock_1"]) == BLOCK


@pytest.mark.parametrize("model_type", vivit.MODEL_TYPES)
def test_forward_shapes_and_intermediates(model_type):
  model, p, x = _params(model_type)
  x = jax.random.normal(jax.random.key(1), x.shape)
  logits, out = model.apply({"params": p}, x)
  assert logits.shape == (2, 5)
  # output_projection is zero-initialised, so logits start at exactly zero
  assert np.all(np.asarray(logits) == 0)
  assert out["tubelets"].shape == (2, 2, 3, 3, 16)
  assert out["pre_logits"].shape == (2, 16)
  assert np.all(np.isfinite(np.asarray(out["encoded"])))


def test_models_3_and_4_mix_time_and_space():
  """A change in frame 0 reaches the pooled output through time attention."""
  for model_type in ("factorized_self_attention_block", "factorized_dot_product_attention"):
    model, p, x = _params(model_type)
    x = jax.random.normal(jax.random.key(1), x.shape)
    _, out = model.apply({"params": p}, x)
    tokens = out["encoded"].reshape(2, 2, 9, 16)
    x2 = x.at[:, :2].add(1.0)  # first tubelet only
    _, out2 = model.apply({"params": p}, x2)
    tokens2 = out2["encoded"].reshape(2, 2, 9, 16)
    # second time slice changed although its own input did not
    assert not np.allclose(tokens[:, 1], tokens2[:, 1], atol=1e-6), model_type


def test_bf16_compute_keeps_f32_params():
  model, p, x = _params("factorized_encoder", dtype="bfloat16")
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(p))
  _, out = model.apply({"params": p}, jax.random.normal(jax.random.key(1), x.shape))
  assert out["encoded"].dtype == jnp.bfloat16


def test_dropout_and_stochastic_depth_are_random_in_training_only():
  model, p, x = _params("spacetime", dropout_rate=0.3, stochastic_depth=0.5)
  p = _perturb(p)
  x = jax.random.normal(jax.random.key(1), x.shape)
  a, _ = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(1)})
  b, _ = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(2)})
  c, _ = model.apply({"params": p}, x, train=False)
  d, _ = model.apply({"params": p}, x, train=False)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(c, d)


def test_knn_is_a_config_choice_per_encoder():
  config = tiny_config("factorized_encoder")
  config.model.temporal_transformer.attention.kind = "dense"
  model = build_model(config.model, 5)
  assert model.spatial_attention.kind == "knn" and model.temporal_attention.kind == "dense"
  assert model.spatial_attention.knn_k == pytest.approx(2 / 3)


def test_knn_with_all_keys_equals_dense():
  cfg_knn = tiny_config("spacetime", knn=True)
  cfg_knn.model.attention.knn_k = 1.0
  cfg_dense = tiny_config("spacetime", knn=False)
  x = jax.random.normal(jax.random.key(3), (2,) + INPUT)
  dense = build_model(cfg_dense.model, 5)
  p = dense.init(jax.random.key(0), x)["params"]
  p = _perturb(p)
  a, _ = dense.apply({"params": p}, x)
  b, _ = build_model(cfg_knn.model, 5).apply({"params": p}, x)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  cfg_knn.model.attention.knn_k = 0.5
  c, _ = build_model(cfg_knn.model, 5).apply({"params": p}, x)
  assert not np.allclose(a, c, atol=1e-4)


def test_central_frame_initializer_fills_middle_time_slice_only():
  shape = (4, 3, 5, 3, 7)  # (t, h, w, C, D): width != time so a wrong axis would show
  k = np.asarray(vivit.central_frame_initializer()(jax.random.key(0), shape))
  assert np.all(k[[0, 1, 3]] == 0)
  assert np.count_nonzero(k[2]) == k[2].size
  # scenic's bug zeroes the width axis instead; that would leave zeros in the middle slice
  assert np.all(k[2].std(axis=(0, 2, 3)) > 0)


def test_average_frame_initializer_gives_equal_slices_summing_to_the_2d_kernel():
  shape = (4, 3, 3, 3, 6)
  k = np.asarray(vivit.average_frame_initializer()(jax.random.key(0), shape))
  for i in range(1, 4):
    np.testing.assert_array_equal(k[i], k[0])
  # a static clip gives what the 2D kernel would give on one frame
  ref = np.asarray(vivit.nn.initializers.lecun_normal()(jax.random.key(0), shape[1:]))
  np.testing.assert_allclose(k.sum(0), ref, rtol=1e-5, atol=1e-6)


def test_kernel_init_method_reaches_the_model():
  model, p, _ = _params("factorized_encoder", kernel_init_method="central_frame_initializer")
  k = np.asarray(p["embedding"]["kernel"])
  assert np.all(k[0] == 0) and np.count_nonzero(k[1]) == k[1].size
