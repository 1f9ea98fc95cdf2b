"""The fused Pallas kernel, run in the Pallas interpreter on CPU, against numpy and the XLA path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_blocked_attention import (N, attention_and_grads, grid_inputs, max_rel_err,
                                          resolve_k, value_and_grads)
from vivit_knn.models import attention as att
from vivit_knn.models import blocked_attention as blocked
from vivit_knn.models import knn_kernel
from vivit_knn.models.attention import AttentionSpec

SHAPE = (1, N, 2, 16)  # [B, N, H, d], N = 37 = CLS + 6 x 6 patches


def test_bit_bisection_finds_the_exact_kth_largest():
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(6, 37)).astype(np.float32) * np.float32(1e3)
  rows[1] = np.round(rows[1] / 500)  # many ties, and both -0.0 and +0.0 below
  rows[2, :10] = -0.0
  rows[2, 10:20] = 0.0
  rows[3, ::2] = -np.inf
  rows[4] = np.float32(3.0)  # all equal
  rows[5] = -np.abs(rows[5])  # all negative
  for k in (1, 2, 18, 25, 37):
    want = np.sort(rows, axis=-1)[:, -k][:, None]
    got = np.asarray(jax.jit(knn_kernel.kth_largest_bits, static_argnums=1)(rows, k))
    np.testing.assert_array_equal(got, want, err_msg=f"k={k}")


CASES = [("float32", 1), ("float32", 0.5), ("float32", 2 / 3), ("float32", 1.0),
         ("float32", None), ("bfloat16", 2 / 3)]


@pytest.mark.parametrize("dtype,knn_k", CASES)
def test_interpreted_kernel_equals_numpy_and_xla(dtype, knn_k):
  q, k, v, g = grid_inputs(2, SHAPE)
  if dtype == "bfloat16":  # v and g are rounded first; the reference sees the rounded values
    v, g = (np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32) for x in (v, g))
  keep = None if knn_k is None else resolve_k(knn_k, N)
  kind = "dense" if knn_k is None else "knn"
  fns = {impl: (lambda *x, i=impl: att.dot_product_attention(*x, AttentionSpec(kind, knn_k, i)))
         for impl in ("pallas_interpret", "xla")}
  inputs = [jnp.asarray(x, dtype) for x in (q, k, v)]
  want, want_grads = attention_and_grads(q, k, v, keep, g)
  out, grads = value_and_grads(fns["pallas_interpret"], *inputs, g)
  ref_out, ref_grads = value_and_grads(fns["xla"], *inputs, g)
  tol = 2e-6 if dtype == "float32" else 2e-2
  assert max_rel_err(want, out) < tol
  assert max_rel_err(ref_out, out) < tol
  for name, w, r, got in zip("qkv", want_grads, ref_grads, grads):
    assert max_rel_err(w, got) < 2 * tol, f"d{name}: {max_rel_err(w, got)}"
    assert max_rel_err(r, got) < 2 * tol, f"d{name} vs xla: {max_rel_err(r, got)}"


def test_kernel_block_sizes_fit_the_stated_budgets():
  assert knn_kernel.supports("tpu", 3137, 64)  # W = 3200: 6.6 MB logits + 3.3 MB K, V
  assert knn_kernel.tpu_vmem_bytes(3200, 64) == 4 * 128 * 3200 * 4 + 4 * 3200 * 64 * 4
  assert knn_kernel.supports("tpu", 4096, 64)
  assert not knn_kernel.supports("tpu", 4097, 64)
  assert not knn_kernel.supports("tpu", 4096, 128)  # 16 MiB: over the 12 MiB budget
  assert knn_kernel.supports("gpu", 197, 64)
  assert not knn_kernel.supports("gpu", 3137, 64)
  assert not knn_kernel.supports("gpu", 197, 48)  # Triton tiles are powers of two
  assert knn_kernel.key_width("gpu", 197) == 256 and knn_kernel.key_width("tpu", 197) == 256
  assert knn_kernel.key_width("tpu", 3137) == 3200
  assert not knn_kernel.supports("cpu", 197, 64)
  assert not knn_kernel.supports("tpu", 197, 256)


def test_compiled_kernel_is_refused_on_cpu():
  q = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ValueError, match="impl='pallas' needs a TPU or GPU"):
    knn_kernel.kernel_attention(q, q, q, 2)


@pytest.mark.parametrize("platform,backend,tokens,marker", [
    ("tpu", "tpu", 3137, "tpu_custom_call"),  # ViViT 32-frame tokens: W = 3200
    ("cuda", "gpu", 197, "triton"),  # a ViT-B/16 frame: W = 256
])
def test_kernel_lowers_for_tpu_and_gpu(platform, backend, tokens, marker):
  # Cross-platform lowering runs the Mosaic / Triton lowering of the kernel body on
  # this machine (the device compiler itself needs the hardware).
  assert knn_kernel.supports(backend, tokens, 64)
  x = jnp.zeros((1, tokens, 4, 64), jnp.bfloat16)
  q, k, v, plan = blocked.prepare(x, x, x, 2 * tokens // 3, q_block=knn_kernel.Q_BLOCK[backend],
                                  key_multiple=knn_kernel.key_width(backend, tokens))
  forward = functools.partial(knn_kernel.kernel_forward, plan=plan, interpret=False,
                              backend=backend)
  text = jax.jit(forward).trace(q, k, v).lower(lowering_platforms=(platform,)).as_text()
  assert marker in text
