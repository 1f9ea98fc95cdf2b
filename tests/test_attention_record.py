"""Recording attention: exact k-NN masks, unchanged logits in every family, top-k mass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import load_config, tiny_config
from vivit_knn.models import attention_record
from vivit_knn.models.attention import AttentionSpec, MultiHeadAttention
from vivit_knn.models.registry import build_model
from vivit_knn.tools.attention_stats import record_attention, topk_mass_curve


def _np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _np_record(params, x, heads, k):
  """Independent numpy reference: logits, kept mask (ties kept), weights, output."""
  def project(p, inp):
    return np.einsum("nd,dhe->nhe", inp, np.asarray(p["kernel"])) + np.asarray(p["bias"])
  q, kk, v = (project(params[n], x) for n in ("query", "key", "value"))
  logits = np.einsum("qhd,khd->hqk", q, kk) / np.sqrt(q.shape[-1])
  thresh = np.sort(logits, axis=-1)[..., -k][..., None]
  kept = logits >= thresh
  weights = _np_softmax(np.where(kept, logits, -np.inf))
  out = np.einsum("hqk,khd->qhd", weights, v)
  out = np.einsum("qhd,hde->qe", out, np.asarray(params["out"]["kernel"]))
  return logits, kept, weights, out + np.asarray(params["out"]["bias"])


@pytest.mark.parametrize("ties", [False, True])
def test_recorded_knn_mask_keeps_exactly_the_keys_at_or_above_the_kth_logit(ties):
  n, d, heads, k = 13, 16, 2, 9
  x = np.random.default_rng(1).normal(size=(n, d)).astype(np.float32)
  if ties:  # repeated tokens give equal logits at the threshold: all of them are kept
    x[5:9] = x[4]
  module = MultiHeadAttention(num_heads=heads, attention=AttentionSpec("knn", k))
  params = module.init(jax.random.key(0), x[None])["params"]
  plain = module.apply({"params": params}, x[None])
  out, state = module.apply({"params": params}, x[None], mutable=[attention_record.COLLECTION])
  record = attention_record.attention_layers(state[attention_record.COLLECTION])
  assert list(record) == [""]  # the module itself, unnamed at the top
  rec = jax.tree.map(np.asarray, record[""])
  logits, kept, weights, ref_out = _np_record(params, x, heads, k)
  np.testing.assert_allclose(rec["logits"][0], logits, rtol=1e-5, atol=1e-5)
  # The mask is judged against the recorded logits so rounding cannot flip a key.
  ref_kept = rec["logits"][0] >= np.sort(rec["logits"][0], axis=-1)[..., -k][..., None]
  np.testing.assert_array_equal(rec["kept"][0], ref_kept)
  np.testing.assert_array_equal(rec["kept"][0], kept)
  counts = rec["kept"][0].sum(-1)
  assert counts.min() >= k and (counts.max() > k) == ties
  np.testing.assert_allclose(rec["weights"][0], weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out)[0], ref_out, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))


_FAMILIES = {
    "vivit_1": lambda: tiny_config("spacetime"),
    "vivit_2": lambda: tiny_config("factorized_encoder"),
    "vivit_3": lambda: tiny_config("factorized_self_attention_block"),
    "vivit_4": lambda: tiny_config("factorized_dot_product_attention"),
    "timesformer": lambda: load_config("synthetic_timesformer"),
    "xvit": lambda: load_config("synthetic_xvit"),
    "cast": lambda: load_config("synthetic_cast"),
    "student": lambda: load_config("synthetic_tsd"),
}


def _family_model_config(family):
  """A small model config of `family` (the student keeps its 4 layers: 4 branch heads)."""
  cfg = _FAMILIES[family]().model
  cfg.hidden_size, cfg.num_heads, cfg.mlp_dim = 16, 2, 32
  if family != "student":
    cfg.num_layers = 1
  return cfg


_INPUTS = {"vivit": (4, 24, 24), "timesformer": (8, 24, 24), "xvit": (8, 24, 24),
           "cast": (8, 32, 32), "student": (8, 32, 32)}


@pytest.mark.parametrize("family", list(_FAMILIES))
def test_recording_leaves_logits_bitwise_identical(family):
  cfg = _family_model_config(family)
  t, h, w = _INPUTS[family.split("_")[0]]
  model = build_model(cfg, 3)
  x = jax.random.normal(jax.random.key(2), (1, t, h, w, 3))
  # Random values of the parameters' shapes: cheaper than running init, and the
  # zero-initialised heads become non-zero, so the logits say something.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.3).astype(s.dtype), shapes)
  plain = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)[0])(params, x)
  logits, layers = record_attention(model, params, np.asarray(x))
  assert np.std(logits) > 0
  np.testing.assert_array_equal(np.asarray(plain), logits)
  assert layers, f"{family}: nothing recorded"
  for name, rec in layers.items():
    w = rec["weights"]
    assert w.shape == rec["kept"].shape == rec["logits"].shape, name
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5, err_msg=name)
    assert not np.any(w[~rec["kept"]]), f"{name}: weight on a dropped key"
  if family == "vivit_4":
    assert any(n.endswith(":time") for n in layers) and any(n.endswith(":space") for n in layers)
  # Without a mutable collection nothing is sown.
  _, state = model.apply({"params": params}, x, train=False, mutable=["other"])
  assert attention_record.COLLECTION not in state


def test_topk_mass_curve_matches_numpy_and_is_monotone_to_one():
  logits = np.random.default_rng(3).normal(size=(3, 2, 7, 11)).astype(np.float32) * 2
  weights = _np_softmax(logits)
  curve = np.asarray(topk_mass_curve(jnp.asarray(weights)))
  rows = weights.reshape(-1, 11)
  for k in range(1, 12):
    ref = np.mean([np.sum(np.sort(r)[::-1][:k]) for r in rows])
    assert abs(curve[k - 1] - ref) < 1e-5
  assert np.all(np.diff(curve) >= 0) and abs(curve[-1] - 1.0) < 1e-5
