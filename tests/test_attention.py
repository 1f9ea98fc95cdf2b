"""Attention: exact k-th largest, dense / k-NN / factorised attention, the kind registry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vivit_knn.models import attention as att
from vivit_knn.models import attention_backends as backends
from vivit_knn.models import kth_largest as kth
from vivit_knn.models.attention import AttentionSpec


def _rng(seed=0):
  return np.random.default_rng(seed)


def _ref_kth(x, k):
  return np.sort(np.asarray(x, np.float32), axis=-1)[..., -k][..., None]


def _softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=-1, keepdims=True)


def _ref_attention(q, k, v, knn=None, bias=None, mask=None):
  """numpy reference; `knn` keeps each row's knn largest logits (argpartition)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  if mask is not None:
    logits = np.where(np.asarray(mask), logits, np.finfo(np.float32).min)
  if knn is not None:
    top = np.argpartition(-logits, knn - 1, axis=-1)[..., :knn]
    keep = np.zeros(logits.shape, bool)
    np.put_along_axis(keep, top, True, axis=-1)
    logits = np.where(keep, logits, -np.inf)
  return np.einsum("...hqk,...khd->...qhd", _softmax(logits), v)


def _qkv(shape, seed=0):
  rng = _rng(seed)
  return tuple(jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for _ in range(3))


# --------------------------------------------------------------------------------------
# kth_largest / knn_mask_logits


def _hard_rows(n, seed):
  """Rows mixing negatives, +-0, -inf/+inf, float extremes and duplicates."""
  rng = _rng(seed)
  x = rng.standard_normal((9, n)).astype(np.float32)
  x[0] = -np.abs(x[0])                                  # all negative
  x[1, ::2] = 0.0
  x[1, 1::4] = -0.0                                     # zeros of both signs
  x[2, : (2 * n) // 3] = -np.inf                        # mostly masked
  x[3] = -np.inf                                        # fully masked
  x[4] = np.round(x[4] * 2) / 2                         # many duplicates
  x[5] = 3.25                                           # all equal
  x[6, :2] = np.inf
  x[6, 2:4] = np.finfo(np.float32).max
  x[7, ::3] = np.finfo(np.float32).min
  x[7, 1::3] = np.float32(1e-40)                        # subnormals
  one = np.float32(1.0)
  x[8] = rng.choice([one, np.nextafter(one, np.float32(2)), np.nextafter(one, np.float32(0)),
                     -one], n)                          # adjacent floats
  return x


@pytest.mark.parametrize("n", [1, 7, 33, 200])
def test_kth_largest_matches_numpy_sort(n):
  x = _hard_rows(n, seed=n)
  for k in sorted({1, max(1, n // 2), max(1, (2 * n) // 3), n}):
    got = kth.kth_largest(jnp.asarray(x), k)
    assert got.shape == (9, 1) and got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), _ref_kth(x, k), err_msg=f"n={n} k={k}")


def test_kth_largest_batched_and_chunked(monkeypatch):
  rng = _rng(1)
  x = rng.standard_normal((2, 3, 13, 40)).astype(np.float32)
  x[0, 1, :, 5:30] = -np.inf
  want = {k: _ref_kth(x, k) for k in (1, 27, 40)}
  np.testing.assert_array_equal(np.asarray(jax.jit(kth.kth_largest, static_argnums=1)(x, 27)),
                                want[27])
  # Force the CPU chunking: 78 rows in chunks of 6, then 13 rows padded to 2 x 8.
  monkeypatch.setattr(kth, "_SEARCH_ELEMS", 8 * kth.row_layout(40).padded)
  for k, ref in want.items():
    np.testing.assert_array_equal(np.asarray(kth.kth_largest(x, k)), ref)
    np.testing.assert_array_equal(np.asarray(kth.kth_largest(x[0, 1], k)), ref[0, 1])


def test_kth_largest_one_dim_and_low_precision():
  rng = _rng(2)
  x = rng.standard_normal(50).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(kth.kth_largest(x, 17)), _ref_kth(x, 17))
  for dtype in (jnp.bfloat16, jnp.float16):
    y = jnp.asarray(rng.standard_normal((4, 30)) * 3, dtype=dtype).at[0, :10].set(-jnp.inf)
    got = kth.kth_largest(y, 20)
    assert got.dtype == dtype and got.shape == (4, 1)
    np.testing.assert_array_equal(np.asarray(got, np.float32),
                                  _ref_kth(np.asarray(y, np.float32), 20))


def test_no_sort_or_top_k_is_used():
  x = jnp.zeros((4, 33))
  q = jnp.zeros((2, 17, 3, 8))
  jaxprs = [jax.make_jaxpr(lambda x: kth.kth_largest(x, 5))(x),
            jax.make_jaxpr(lambda q: att.dot_product_attention(q, q, q,
                                                               AttentionSpec("knn", 5)))(q)]
  for jaxpr in jaxprs:
    text = str(jaxpr)
    assert "scan" in text  # the bit-by-bit search loop is there...
    assert "sort" not in text and "top_k" not in text  # ...and no sorting


def test_kth_largest_rejects_bad_arguments():
  x = jnp.zeros((2, 5))
  for k in (0, 6, -1, True, 2.0, None):
    with pytest.raises(ValueError, match="k must be an int in"):
      kth.kth_largest(x, k)
  with pytest.raises(TypeError):
    kth.kth_largest(jnp.zeros((2, 5), jnp.int32), 1)


def test_knn_mask_logits_keeps_ties_and_masks_the_rest():
  logits = jnp.asarray([[3.0, 1.0, 2.0, 2.0, 0.0, 2.0],
                        [5.0, -1.0, 4.0, -2.0, 0.5, 6.0]])
  out = np.asarray(kth.knn_mask_logits(logits, 2))
  # Row 0: the 2nd largest is 2.0, shared by three entries: all kept.
  np.testing.assert_array_equal(out[0], [3.0, -np.inf, 2.0, 2.0, -np.inf, 2.0])
  np.testing.assert_array_equal(out[1], [5.0, -np.inf, -np.inf, -np.inf, -np.inf, 6.0])


# --------------------------------------------------------------------------------------
# resolve_knn_k


@pytest.mark.parametrize("k, n, want", [
    (5, 17, 5), (17, 17, 17), (1, 1, 1), (np.int64(3), 8, 3),
    (2 / 3, 17, 11), (1.0, 17, 17), (0.5, 3, 2), (0.5, 5, 3), (0.01, 10, 1), (0.25, 4, 1),
])
def test_resolve_knn_k_values(k, n, want):
  assert att.resolve_knn_k(k, n) == want


@pytest.mark.parametrize("k", [0, 18, -3, 0.0, -0.5, 1.5, 17.0, float("nan"), True, None, "3"])
def test_resolve_knn_k_errors_name_the_field_and_token_count(k):
  with pytest.raises(ValueError, match=r"knn_k.*17 tokens"):
    att.resolve_knn_k(k, 17)


# --------------------------------------------------------------------------------------
# dot_product_attention


@pytest.mark.parametrize("path", ["blockwise", "all-at-once"])
@pytest.mark.parametrize("knn_k", [5, 2 / 3])
def test_knn_attention_matches_numpy_reference(knn_k, path):
  b, h, n, d = 2, 3, 17, 8
  q, k, v = _qkv((b, n, h, d))
  kwargs = {}
  if path == "all-at-once":
    kwargs["bias"] = jnp.zeros((h, n, n))  # any bias selects the all-at-once path
  out = att.dot_product_attention(q, k, v, AttentionSpec("knn", knn_k), **kwargs)
  assert out.shape == (b, n, h, d) and out.dtype == jnp.float32
  want = _ref_attention(q, k, v, knn=att.resolve_knn_k(knn_k, n))
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  # k-NN really changes the result here.
  assert not np.allclose(np.asarray(out), _ref_attention(q, k, v), atol=1e-3)


def test_knn_with_all_keys_equals_dense():
  q, k, v = _qkv((2, 17, 3, 8), seed=3)
  for bias in (None, jnp.zeros(())):
    dense = att.dot_product_attention(q, k, v, bias=bias)
    knn = att.dot_product_attention(q, k, v, AttentionSpec("knn", 17), bias=bias)
    np.testing.assert_allclose(np.asarray(knn), np.asarray(dense), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(dense), _ref_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_bias_and_mask_apply_before_knn():
  b, h, n, d = 2, 2, 9, 4
  q, k, v = _qkv((b, n, h, d), seed=4)
  rng = _rng(5)
  bias = jnp.asarray(rng.standard_normal((h, n, n)), jnp.float32)
  mask = jnp.asarray(rng.random((b, 1, n, n)) < 0.7).at[..., 0].set(True)
  dense = att.dot_product_attention(q, k, v, bias=bias, mask=mask)
  np.testing.assert_allclose(np.asarray(dense), _ref_attention(q, k, v, bias=bias, mask=mask),
                             rtol=1e-5, atol=1e-5)
  knn = att.dot_product_attention(q, k, v, AttentionSpec("knn", 3), bias=bias, mask=mask)
  np.testing.assert_allclose(np.asarray(knn),
                             _ref_attention(q, k, v, knn=3, bias=bias, mask=mask),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, heads_per_block, queries_per_block", [
    ((2, 40, 3, 8), 2, None),   # 6 heads in blocks of 2 (3 for dense)
    ((7, 13, 1, 8), 5, None),   # 7 heads padded to 10, blocks of 5
    ((2, 40, 3, 8), None, 20),  # each head's 40 queries in blocks of 20
    ((1, 13, 2, 8), None, 8),   # 13 queries padded to 16, blocks of 8
])
def test_blockwise_blocking_matches_reference(monkeypatch, shape, heads_per_block,
                                              queries_per_block):
  q, k, v = _qkv(shape, seed=6)
  n = shape[1]
  knn_k = (2 * n) // 3
  monkeypatch.setattr(backends, "_MIN_Q_BLOCK", 1)
  for kind, width in (("dense", n), ("knn", kth.row_layout(n).padded)):
    if heads_per_block:
      monkeypatch.setattr(backends, "_BLOCK_ELEMS", heads_per_block * n * width)
    else:
      monkeypatch.setattr(backends, "_BLOCK_ELEMS", queries_per_block * width)
    out = att.dot_product_attention(q, k, v, AttentionSpec(kind, knn_k))
    want = _ref_attention(q, k, v, knn=knn_k if kind == "knn" else None)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_bh, num_q, width, block_elems, min_q_block", [
    (24, 785, 800, 1 << 20, 64), (2352, 8, 32, 1 << 20, 64), (7, 13, 32, 5 * 13 * 32, 1),
    (2, 3137, 3200, 1 << 20, 64), (2, 3136, 3136, 1 << 20, 64), (13, 1, 1, 4, 1),
])
def test_block_plans_cover_every_row_within_the_budget(num_bh, num_q, width, block_elems,
                                                       min_q_block):
  group, num_bh_pad, q_block, num_q_pad = backends._plan_blocks(num_bh, num_q, width,
                                                                block_elems, min_q_block)
  # Blocks tile the padded rows exactly and cover every real row.
  assert num_bh_pad % group == 0 and num_bh <= num_bh_pad < num_bh + group
  assert num_q_pad % q_block == 0 and num_q <= num_q_pad < num_q + q_block
  # A block stays within the budget unless one head's minimal query block exceeds it.
  assert group * q_block * width <= max(block_elems, min(num_q, min_q_block) * width)
  # Heads are only grouped when whole heads fit; then their queries are not split.
  assert group == 1 or q_block == num_q


def test_accelerator_path_matches_reference(monkeypatch):
  # Off CPU (or in one_piece_paths), attention is computed all at once and rows are
  # searched unchunked; the blockwise path must not run.
  def no_blockwise(*args, **kwargs):
    raise AssertionError("the blockwise path ran inside one_piece_paths()")

  monkeypatch.setattr(backends, "_blockwise_attention", no_blockwise)
  q, k, v = _qkv((2, 17, 3, 8), seed=11)
  with att.one_piece_paths():
    out = att.dot_product_attention(q, k, v, AttentionSpec("knn", 7))
    x = _hard_rows(40, seed=12)
    thresh = kth.kth_largest(x, 13)
  np.testing.assert_allclose(np.asarray(out), _ref_attention(q, k, v, knn=7),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(thresh), _ref_kth(x, 13))


def test_dropout_and_dtype():
  q, k, v = _qkv((2, 17, 3, 8), seed=7)
  base = att.dot_product_attention(q, k, v, dropout_rate=0.5)
  dropped = att.dot_product_attention(q, k, v, dropout_rate=0.5, deterministic=False,
                                      dropout_rng=jax.random.key(0))
  assert not np.allclose(np.asarray(base), np.asarray(dropped))
  with pytest.raises(ValueError, match="dropout_rng"):
    att.dot_product_attention(q, k, v, dropout_rate=0.5, deterministic=False)
  out = att.dot_product_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                                  v.astype(jnp.bfloat16), AttentionSpec("knn", 3))
  assert out.dtype == jnp.bfloat16
  assert att.dot_product_attention(q, k, v, dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_unknown_kind_raises():
  q, k, v = _qkv((1, 4, 2, 4))
  with pytest.raises(ValueError, match="kind"):
    att.dot_product_attention(q, k, v, AttentionSpec("sparse"))
  with pytest.raises(ValueError, match="kind"):
    att.factorized_dot_product_attention(q[:, None], k[:, None], v[:, None],
                                         AttentionSpec("sparse"))


def test_knn_attention_jit_and_grad():
  q, k, v = _qkv((2, 17, 3, 8), seed=8)
  w = jnp.asarray(_rng(9).standard_normal((2, 17, 3, 8)), jnp.float32)

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

  knn = loss(lambda q, k, v: att.dot_product_attention(q, k, v, AttentionSpec("knn", 6)))

  def topk_reference(q, k, v):  # same masking, threshold from lax.top_k
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    thresh = lax.stop_gradient(lax.top_k(logits, 6)[0][..., -1:])
    probs = jax.nn.softmax(jnp.where(logits >= thresh, logits, -jnp.inf), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

  value, grads = jax.jit(jax.value_and_grad(knn, argnums=(0, 1, 2)))(q, k, v)
  want_value, want = jax.value_and_grad(loss(topk_reference), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(float(value), float(want_value), rtol=1e-5)
  for g, r in zip(grads, want):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-3
    np.testing.assert_allclose(g, np.asarray(r), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------
# factorized_dot_product_attention


def _ref_factorized(q, k, v, knn_k=None):
  q, k, v = (np.asarray(a) for a in (q, k, v))
  b, t, s, h, d = q.shape
  half = h // 2
  out = np.zeros(q.shape)
  for si in range(s):  # time heads: for each spatial position, over the T tokens
    kt = None if knn_k is None else att.resolve_knn_k(knn_k, t)
    out[:, :, si, :half] = _ref_attention(q[:, :, si, :half], k[:, :, si, :half],
                                          v[:, :, si, :half], knn=kt)
  for ti in range(t):  # space heads: for each frame, over its S tokens
    ks = None if knn_k is None else att.resolve_knn_k(knn_k, s)
    out[:, ti, :, half:] = _ref_attention(q[:, ti, :, half:], k[:, ti, :, half:],
                                          v[:, ti, :, half:], knn=ks)
  return out


@pytest.mark.parametrize("kind, knn_k", [("dense", None), ("knn", 2 / 3)])
def test_factorized_attention_matches_reference(kind, knn_k):
  q, k, v = _qkv((2, 4, 6, 4, 8), seed=10)
  out = att.factorized_dot_product_attention(q, k, v, AttentionSpec(kind, knn_k))
  assert out.shape == q.shape
  np.testing.assert_allclose(np.asarray(out), _ref_factorized(q, k, v, knn_k),
                             rtol=1e-5, atol=1e-5)


def test_factorized_attention_rejects_odd_heads():
  q, k, v = _qkv((1, 2, 3, 3, 4))
  with pytest.raises(ValueError, match="num_heads"):
    att.factorized_dot_product_attention(q, k, v)


# --------------------------------------------------------------------------------------
# MultiHeadAttention


def _init_apply(module, x, **kwargs):
  params = module.init(jax.random.key(0), x)
  return params, module.apply(params, x, **kwargs)


def _shapes(module, x):
  """Parameter and output shapes, without running anything."""
  params = jax.eval_shape(module.init, jax.random.key(0), x)
  out = jax.eval_shape(module.apply, params, x)
  return jax.tree.map(lambda a: a.shape, params["params"]), out


def test_mha_parameter_layout_matches_scenic():
  x = jnp.zeros((2, 10, 16), jnp.float32)
  shapes, out = _shapes(att.MultiHeadAttention(num_heads=4), x)
  assert shapes == {
      "query": {"kernel": (16, 4, 4), "bias": (4, 4)},
      "key": {"kernel": (16, 4, 4), "bias": (4, 4)},
      "value": {"kernel": (16, 4, 4), "bias": (4, 4)},
      "out": {"kernel": (4, 4, 16), "bias": (16,)},
  }
  assert out.shape == (2, 10, 16) and out.dtype == jnp.float32
  shapes, out = _shapes(att.MultiHeadAttention(num_heads=2, qkv_features=8, out_features=12,
                                               use_bias=False), x)
  assert shapes == {"query": {"kernel": (16, 2, 4)}, "key": {"kernel": (16, 2, 4)},
                    "value": {"kernel": (16, 2, 4)}, "out": {"kernel": (2, 4, 12)}}
  assert out.shape == (2, 10, 12)


def test_mha_knn_with_all_keys_equals_dense_and_dtypes():
  x = jnp.asarray(_rng(12).standard_normal((2, 17, 24)), jnp.float32)  # q/k/v [2, 17, 3, 8]
  dense = att.MultiHeadAttention(num_heads=3)
  params = dense.init(jax.random.key(0), x)
  y_dense = dense.apply(params, x)
  y_knn = att.MultiHeadAttention(num_heads=3, attention=AttentionSpec("knn", 17)).apply(params, x)
  np.testing.assert_allclose(np.asarray(y_knn), np.asarray(y_dense), rtol=1e-6, atol=1e-6)
  y_knn_small = att.MultiHeadAttention(num_heads=3, attention=AttentionSpec("knn", 0.3)).apply(params, x)
  assert not np.allclose(np.asarray(y_knn_small), np.asarray(y_dense), atol=1e-4)

  low = att.MultiHeadAttention(num_heads=3, attention=AttentionSpec("knn", 0.5), dtype=jnp.bfloat16)
  params16, y16 = _init_apply(low, x)
  assert y16.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params16))


def test_mha_factorized_hook_dropout_and_validation():
  x = jnp.asarray(_rng(13).standard_normal((2, 3, 5, 16)), jnp.float32)
  params, out = _init_apply(att.MultiHeadAttention(num_heads=4, factorized=True,
                                                   attention=AttentionSpec("knn", 2 / 3)), x)
  assert out.shape == x.shape

  tokens = jnp.asarray(_rng(14).standard_normal((2, 17, 24)), jnp.float32)
  zero_values = att.MultiHeadAttention(
      num_heads=3, qkv_transform=lambda q, k, v: (q, k, jnp.zeros_like(v)))
  _, out = _init_apply(zero_values, tokens)
  np.testing.assert_array_equal(np.asarray(out), 0.0)  # zero values, zero out-bias

  drop = att.MultiHeadAttention(num_heads=3, dropout_rate=0.5)
  params = drop.init(jax.random.key(0), tokens)
  eval_out = drop.apply(params, tokens)
  train_out = drop.apply(params, tokens, deterministic=False,
                         rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(np.asarray(eval_out), np.asarray(train_out))

  with pytest.raises(ValueError, match="num_heads"):
    att.MultiHeadAttention(num_heads=5).init(jax.random.key(0), tokens)
  with pytest.raises(ValueError, match="num_heads"):  # divides 6, but odd
    att.MultiHeadAttention(num_heads=3, factorized=True).init(
        jax.random.key(0), jnp.zeros((1, 2, 3, 6)))


@pytest.mark.parametrize("n", [17, 24, 197])
def test_flash_dense_padding_equals_dense_attention(n):
  """The cuDNN path pads odd token counts; the padding must not change the result.

  Runs with the XLA implementation of `jax.nn.dot_product_attention` (same padding
  and key-length masking as on GPU).
  """
  rng = np.random.default_rng(n)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 3, n, 4, 16)), jnp.float32) for _ in range(3))
  ref = att.dot_product_attention(q, k, v)
  out = att.flash_dense_attention(q, k, v, implementation="xla")
  assert out.shape == ref.shape
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=2e-5, atol=2e-5)


def test_flash_path_is_used_only_where_cudnn_can_run():
  half = jnp.zeros((1, 8, 2, 64), jnp.bfloat16)
  assert not backends._flash_eligible(half, half) or jax.default_backend() == "gpu"
  assert not backends._flash_eligible(jnp.zeros((1, 8, 2, 64), jnp.float32),
                                       jnp.zeros((1, 8, 2, 64), jnp.float32))
  assert not backends._flash_eligible(jnp.zeros((1, 8, 2, 60), jnp.bfloat16),
                                       jnp.zeros((1, 8, 2, 60), jnp.bfloat16))
