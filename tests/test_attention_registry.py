"""A new attention kind is its function plus one registry entry: blocks and configs take it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import tiny_config
from vivit_knn import config as config_lib
from vivit_knn.models import attention as att
from vivit_knn.models.attention import AttentionSpec
from vivit_knn.models.encoder import EncoderBlock
from vivit_knn.models.registry import build_model

INPUT = (4, 24, 24, 3)


def uniform_attention(query, key, value, spec, *, dtype=None, **options):
  """Every query takes the plain mean of the values (all logits equal)."""
  del query, key, spec, options
  out = jnp.mean(value, axis=-3, keepdims=True)
  out = jnp.broadcast_to(out, value.shape)
  return out.astype(dtype or value.dtype)


def at_most_four_keys(spec, num_keys, field):
  """Rejects attentions over more than four keys (a stand-in for a kind's own check)."""
  del spec
  if num_keys > 4:
    raise ValueError(f"{field}.kind='uniform4' sees {num_keys} tokens, at most 4 allowed")


@pytest.fixture
def uniform_kinds(monkeypatch):
  monkeypatch.setitem(att.ATTENTION_KINDS, "uniform", att.AttentionKind(uniform_attention))
  monkeypatch.setitem(att.ATTENTION_KINDS, "uniform4",
                      att.AttentionKind(uniform_attention, check=at_most_four_keys))


def _layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def test_encoder_block_runs_a_registered_kind(uniform_kinds):
  del uniform_kinds
  x = jax.random.normal(jax.random.key(0), (2, 7, 16))
  block = EncoderBlock(mlp_dim=32, num_heads=4, attention=AttentionSpec("uniform"))
  params = block.init(jax.random.key(1), x, True)["params"]
  _, state = block.apply({"params": params}, x, True, capture_intermediates=True,
                         mutable=["intermediates"])
  got = np.asarray(state["intermediates"]["MultiHeadDotProductAttention_0"]["__call__"][0])
  # Reference in numpy: LN, value projection, mean over the tokens, output projection.
  a = jax.tree.map(np.asarray, params["MultiHeadDotProductAttention_0"])
  y = _layer_norm(np.asarray(x, np.float64), jax.tree.map(np.asarray, params["LayerNorm_0"]))
  values = np.einsum("bnd,dhk->bnhk", y, a["value"]["kernel"]) + a["value"]["bias"]
  mean = np.broadcast_to(values.mean(axis=1, keepdims=True), values.shape)
  want = np.einsum("bnhk,hkd->bnd", mean, a["out"]["kernel"]) + a["out"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Every token gets the same attention output, which dense attention would not give.
  np.testing.assert_allclose(got, np.broadcast_to(got[:, :1], got.shape), rtol=1e-5, atol=1e-6)


def test_config_selects_a_registered_kind_and_runs_its_check(uniform_kinds):
  del uniform_kinds
  config = tiny_config()
  config.model.spatial_transformer.attention.kind = "uniform"
  config.model.temporal_transformer.attention.kind = "uniform4"
  config.model.temporal_transformer.attention.knn_k = 50.0  # not this kind's option
  # The temporal encoder sees CLS + 2 tubelet times = 3 keys: within uniform4's limit.
  config_lib.validate(config, INPUT)
  model = build_model(config.model, 4)
  assert model.spatial_attention == AttentionSpec("uniform")
  assert model.temporal_attention == AttentionSpec("uniform4")
  logits, _ = model.apply(model.init(jax.random.key(0), jnp.zeros((1,) + INPUT)),
                          jnp.ones((1,) + INPUT))
  assert logits.shape == (1, 4)
  config.model.spatial_transformer.attention.kind = "uniform4"  # CLS + 9 patches
  with pytest.raises(ValueError, match=r"model\.spatial_transformer\.attention\.kind.*10 tokens"):
    config_lib.validate(config, INPUT)


def test_unregistered_kind_is_rejected_everywhere():
  config = tiny_config()
  config.model.spatial_transformer.attention.kind = "uniform"
  with pytest.raises(ValueError, match=r"model\.spatial_transformer\.attention\.kind"):
    config_lib.validate(config, INPUT)
  x = jnp.zeros((1, 3, 8))
  with pytest.raises(ValueError, match="kind must be one of"):
    att.MultiHeadAttention(num_heads=2, attention=AttentionSpec("uniform")).init(
        jax.random.key(0), x)
