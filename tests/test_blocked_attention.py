"""Query-blocked attention with a recomputing backward pass: exactness, path choice, memory."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from tests.events import read_scalars
from tests.tiny import run_python
from vivit_knn.models import attention as att
from vivit_knn.models import attention_backends as backends
from vivit_knn.models import blocked_attention as blocked
from vivit_knn.models.attention import AttentionSpec
from vivit_knn.models.cpu_paths import disabled as one_piece_paths

N = 37  # CLS + 6 x 6 patches: odd
SHAPE = (2, N, 2, 16)  # [B, N, H, d]; d = 16 makes the 1/sqrt(d) scale exact
KNN_CASES = [1, 0.5, 2 / 3, 1.0, None]  # k = 1, n/2, 2n/3, n (float fractions), dense


# A float64 numpy reference that imports nothing from the package (the kernel's
# tests use it too).

def resolve_k(knn_k, n):
  """`knn_k` (int count or float fraction, rounded half up) -> keys kept per query."""
  if isinstance(knn_k, float):
    return min(max(int(math.floor(knn_k * n + 0.5)), 1), n)
  return int(knn_k)


def grid_inputs(seed, shape=SHAPE):
  """q and k on a 1/2 grid (float32 logits are exact and tie often), v normal, a cotangent."""
  rng = np.random.default_rng(seed)
  q, k = (rng.integers(-2, 3, size=shape).astype(np.float32) / 2 for _ in range(2))
  v, g = (rng.normal(size=shape).astype(np.float32) for _ in range(2))
  return q, k, v, g


def attention_and_grads(q, k, v, keep, cotangent):
  """Output and `(dq, dk, dv)` of `sum(out * cotangent)`; `keep` None is dense.

  Shapes `[B, N, H, d]`; every entry at least the row's `keep`-th largest logit is
  kept (ties included).
  """
  q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, cotangent))
  scale = q.shape[-1] ** -0.5
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  if keep is not None:
    thresh = np.sort(logits, axis=-1)[..., -keep][..., None]
    logits = np.where(logits >= thresh, logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", probs, v)
  dv = np.einsum("bhqk,bqhd->bkhd", probs, g)
  dprobs = np.einsum("bqhd,bkhd->bhqk", g, v)
  dlogits = probs * (dprobs - (probs * dprobs).sum(-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", dlogits, k) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", dlogits, q) * scale
  return out, (dq, dk, dv)


def max_rel_err(want, got):
  """max |want - got| / max |want| (the plain difference when `want` is all zero)."""
  want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
  scale = np.max(np.abs(want))
  diff = np.max(np.abs(want - got))
  return diff / scale if scale else diff


def value_and_grads(fn, q, k, v, g):
  """`fn(q, k, v)` and the gradients of `sum(fn(q, k, v) * g)`, as float64 numpy (one jit)."""

  @jax.jit
  def run(q, k, v):
    out, pullback = jax.vjp(fn, q, k, v)
    return out, pullback(jnp.asarray(g, out.dtype))

  out, grads = run(q, k, v)
  return np.asarray(out, np.float64), [np.asarray(x, np.float64) for x in grads]


def spec_for(knn_k, impl):
  return AttentionSpec("dense", impl=impl) if knn_k is None else AttentionSpec("knn", knn_k,
                                                                                impl=impl)


TOL = {"float32": 2e-6, "bfloat16": 2e-2}


@pytest.mark.parametrize("dtype,knn_cases", [("float32", KNN_CASES), ("bfloat16", [0.5, None])])
def test_blocked_equals_numpy_and_the_one_piece_path(dtype, knn_cases):
  q, k, v, g = grid_inputs(0)
  if dtype == "bfloat16":  # v and g are rounded first; the reference sees the rounded values
    v, g = (np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32) for x in (v, g))
  tol = TOL[dtype]
  for knn_k in knn_cases:
    keep = None if knn_k is None else resolve_k(knn_k, N)
    want, want_grads = attention_and_grads(q, k, v, keep, g)
    xla = lambda *x: att.dot_product_attention(*x, spec_for(knn_k, "xla"))
    # Five query blocks of 8 rows (the public path would take one block of 40 here);
    # the backward pass in three blocks of 16 (padded from 40 to 48 rows).
    blocks = lambda *x: blocked.blocked_attention(*x, keep, q_block=8, backward_q_block=16)
    inputs = [jnp.asarray(x, dtype) for x in (q, k, v)]
    ref_out, ref_grads = value_and_grads(xla, *inputs, g)
    out, grads = value_and_grads(blocks, *inputs, g)
    case = f"{dtype} knn_k={knn_k}"
    assert max_rel_err(want, out) < tol, case
    assert max_rel_err(ref_out, out) < tol, case
    for gname, w, r, got in zip("qkv", want_grads, ref_grads, grads):
      assert max_rel_err(w, got) < 2 * tol, f"{case} d{gname}: {max_rel_err(w, got)}"
      assert max_rel_err(r, got) < 2 * tol, f"{case} d{gname} vs xla: {max_rel_err(r, got)}"


def test_public_blocked_path_equals_xla():
  q, k, v, g = grid_inputs(1)
  outs = [value_and_grads(lambda *x, i=impl: att.dot_product_attention(
      *x, AttentionSpec("knn", 2 / 3, impl=i)), q, k, v, g) for impl in ("blocked", "xla")]
  (out_b, grads_b), (out_x, grads_x) = outs
  assert max_rel_err(out_x, out_b) < 2e-6
  for got, want in zip(grads_b, grads_x):
    assert max_rel_err(want, got) < 4e-6


def test_ties_at_the_threshold_are_kept():
  # Every logit of a row is equal: k = 1 keeps all keys, so the output is the mean value.
  q = jnp.zeros((1, 9, 1, 4))
  v = jnp.asarray(np.random.default_rng(1).normal(size=(1, 9, 1, 4)), jnp.float32)
  out = att.dot_product_attention(q, q, v, AttentionSpec("knn", 1, impl="blocked"))
  np.testing.assert_allclose(np.asarray(out), np.broadcast_to(np.asarray(v).mean(1, keepdims=True),
                                                              v.shape), rtol=1e-6, atol=1e-6)


def test_auto_chooses_by_logit_bytes_and_falls_back_for_bias_mask_dropout():
  small = jnp.zeros((1, 64, 2, 16))
  big = jax.ShapeDtypeStruct((4, 2048, 4, 16), jnp.float32)  # 4*4*2048^2*4 B = 256 MiB
  assert backends.choose_impl("auto", small, small, 8, plain=True) == "xla"
  assert backends.choose_impl("auto", big, big, 8, plain=True) == "blocked"
  assert backends.choose_impl("auto", big, big, None, plain=True) == "blocked"
  assert backends.choose_impl("auto", big, big, 8, plain=False) == "xla"
  with one_piece_paths():  # cost analysis asks for the loop-free form
    assert backends.choose_impl("auto", big, big, 8, plain=True) == "xla"
    assert backends.choose_impl("blocked", big, big, 8, plain=True) == "blocked"
  assert backends.choose_impl("xla", big, big, 8, plain=True) == "xla"
  assert backends.choose_impl("blocked", small, small, 8, plain=True) == "blocked"
  assert backends.choose_impl("pallas_interpret", small, small, 8, plain=True) == \
      "pallas_interpret"


def test_forced_paths_name_the_impl_field():
  q = jnp.zeros((1, 8, 2, 16))
  mask = jnp.ones((1, 2, 8, 8), bool)
  with pytest.raises(ValueError, match=r"impl='blocked' supports no bias, mask"):
    att.dot_product_attention(q, q, q, AttentionSpec("knn", 2, impl="blocked"), mask=mask)
  with pytest.raises(ValueError, match=r"impl='pallas' needs a TPU or GPU"):
    att.dot_product_attention(q, q, q, AttentionSpec("knn", 2, impl="pallas"))
  with pytest.raises(ValueError, match=r"attention\.impl must be one of"):
    att.dot_product_attention(q, q, q, AttentionSpec("knn", 2, impl="fast"))
  block = ConfigDict({"kind": "knn", "knn_k": 0.5, "impl": "fused"})
  with pytest.raises(ValueError, match=r"model\.attention\.impl must be one of"):
    att.check_attention_spec(att.attention_spec(block), 8, "model.attention")
  block.impl = "blocked"
  assert att.attention_spec(block) == AttentionSpec("knn", 0.5, "blocked")
  att.check_attention_spec(att.attention_spec(block), 8, "model.attention")
  assert att.attention_config("knn", 0.5).impl == "auto"
  # A block written without `impl` (older configs) is 'auto'.
  assert att.attention_spec(ConfigDict({"kind": "dense", "knn_k": 0.5})).impl == "auto"


def _temp_bytes(fn, n, heads=2):
  """Temporary bytes of the compiled `grad(sum(fn(q, k, v)))` at n tokens (nothing runs)."""
  x = jax.ShapeDtypeStruct((1, n, heads, 64), jnp.float32)
  grad = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))
  return jax.jit(grad).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes


def test_blocked_memory_grows_linearly_not_quadratically():
  heads, sizes = 2, (785, 3137)
  fns = {impl: (lambda q, k, v, i=impl: att.dot_product_attention(
      q, k, v, AttentionSpec("knn", 2 / 3, impl=i))) for impl in ("blocked", "xla")}
  # A fixed block size: only the block count changes with N.
  fns["blocked, q_block=128"] = lambda q, k, v: blocked.blocked_attention(
      q, k, v, resolve_k(2 / 3, q.shape[1]), q_block=128)
  with one_piece_paths():  # 'xla' materialises all logits at once (as on GPU / TPU)
    temp = {name: [_temp_bytes(fn, n, heads) for n in sizes] for name, fn in fns.items()}
  one_nxn = 4 * heads * sizes[1] ** 2  # one [H, N, N] float32 tensor at N = 3137
  print(f"\ntemp bytes at N={sizes}: {temp}; one HxNxN f32 at 3137: {one_nxn}")
  for name in ("blocked", "blocked, q_block=128"):
    assert temp[name][1] < one_nxn, name
    assert temp[name][1] / temp[name][0] <= 6, name  # 4x the tokens; quadratic would be ~16x
  assert 3 <= temp["blocked, q_block=128"][1] / temp["blocked, q_block=128"][0]
  assert temp["xla"][1] > one_nxn  # a bound the materialised path cannot meet
  assert temp["xla"][1] / temp["xla"][0] > 10


def _last_loss(work):
  return read_scalars(str(work / "train"))["train/loss"][-1]


def test_main_takes_the_impl_key(tmp_path):
  base = ["-m", "vivit_knn.main", "--config=configs/synthetic_tiny.py",
          "--config.train.num_train_steps=2", "--config.train.log_every_steps=2",
          "--config.optimizer.warmup_steps=0", "--config.train.eval_at_end=False"]
  blocks = ("spatial_transformer", "temporal_transformer")

  def impl(value):
    return [f"--config.model.{b}.attention.impl={value}" for b in blocks]

  run_python(base + impl("blocked") + [f"--workdir={tmp_path / 'blocked'}"])
  step, loss = _last_loss(tmp_path / "blocked")
  assert step == 2 and 0.0 < loss < 10.0
  # The key reaches the attention: the kernel path is refused on CPU, in one line.
  proc = run_python(base + impl("pallas") + [f"--workdir={tmp_path / 'pallas'}"], check=False)
  assert proc.returncode == 2, proc.stderr
  assert "impl='pallas' needs a TPU or GPU" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
