"""A fused Pallas kernel for dense and exact k-NN attention (the forward pass).

One instance takes one (batch x head) row and `q_block` queries: it forms the
`[q_block, W]` float32 logits on chip, finds each row's k-th largest logit by a 32-step
bit search (`kth_largest_bits`), masks the rest to -inf and writes the softmax-weighted
values with each row's log-sum-exp and threshold; the logits never reach HBM. The
backward pass (`blocked_attention.blocked_backward`) compares recomputed logits with the
stored thresholds (the same kept set while the kernel's and XLA's dot products agree,
as they do in the interpreter that the tests run).

Block sizes (W: keys padded to a multiple of 128 on TPU, a power of two >= 128 on GPU):
* TPU (Mosaic): `q_block` 128; VMEM about 4 f32 `[128, W]` arrays plus
  double-buffered K, V (`tpu_vmem_bytes`), accepted up to 12 MiB (v5e's default
  scoped VMEM is 16 MiB): W <= 4096 at d = 64, W <= 3072 at d = 128.
* GPU (Triton): `q_block` 16 (Triton's smallest dot tile), 8 warps; logits and keys
  stay in registers (64K per SM, 255 per thread), so W <= 512; longer rows take the
  blocked XLA path.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from vivit_knn.models import blocked_attention as blocked
from vivit_knn.models import kth_largest as kth

Array = jax.Array

KEY_MULTIPLE = 128  # keys are padded to a multiple of the TPU lane width
Q_BLOCK = {"tpu": 128, "gpu": 16}
INTERPRET_Q_BLOCK = 8
TPU_VMEM_BUDGET = 12 << 20
GPU_MAX_WIDTH = 512
_MAX_HEAD_DIM = 128
_SIGN = -(2 ** 31)  # int32 with only the sign bit set


def kth_largest_bits(x: Array, k: int) -> Array:
  """Exact k-th largest of each row of float32 `x` `[R, W]` as `[R, 1]`, by 32-step bisection."""
  keys = kth.sortable_key(x)

  def step(i, prefix):
    cand = prefix | jnp.left_shift(jnp.int32(1), 31 - i)
    count = jnp.sum((keys >= (cand ^ jnp.int32(_SIGN))).astype(jnp.int32), axis=-1,
                    keepdims=True)
    return jnp.where(count >= k, cand, prefix)

  prefix = lax.fori_loop(0, 32, step, jnp.zeros((x.shape[0], 1), jnp.int32))
  return kth.key_to_float(prefix ^ jnp.int32(_SIGN))


def _kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, thresh_ref, *, knn: Optional[int],
            num_k: int, precision):
  """One (row, query block): logits, threshold, masked softmax and weighted sum on chip."""
  q, k, v = q_ref[...], k_ref[...], v_ref[...]
  scale = q.shape[-1] ** -0.5
  logits = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                           preferred_element_type=jnp.float32) * scale
  if num_k < logits.shape[-1]:
    col = lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    logits = jnp.where(col < num_k, logits, -jnp.inf)
  thresh = jnp.full((logits.shape[0], 1), -jnp.inf, jnp.float32)
  if knn is not None:
    thresh = kth_largest_bits(logits, knn)
    logits = jnp.where(logits >= thresh, logits, -jnp.inf)
  peak = jnp.max(logits, axis=-1, keepdims=True)
  unnorm = jnp.exp(logits - peak)
  total = jnp.sum(unnorm, axis=-1, keepdims=True)
  weights = unnorm / total
  out = lax.dot_general(weights.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                        precision=precision, preferred_element_type=jnp.float32)
  o_ref[...] = out.astype(o_ref.dtype)
  lse_ref[...] = peak + jnp.log(total)
  thresh_ref[...] = thresh


def _compiler_params(backend: str):
  """Triton with 8 warps on GPU (see the module doc); on TPU both grid axes are independent."""
  if backend == "gpu":
    from jax.experimental.pallas import triton as pl_triton  # pylint: disable=g-import-not-at-top
    return pl_triton.CompilerParams(num_warps=8, num_stages=1)
  from jax.experimental.pallas import tpu as pl_tpu  # pylint: disable=g-import-not-at-top
  return pl_tpu.CompilerParams(dimension_semantics=("parallel", "parallel"))


def kernel_forward(q: Array, k: Array, v: Array, plan: blocked.Plan, *,
                   interpret: bool, backend: Optional[str] = None) -> Tuple[Array, Array, Array]:
  """The kernel on `prepare`d inputs: `(out, lse, thresh)`; `backend` picks the lowering."""
  num_bh, num_q, depth = q.shape
  width, dv = k.shape[1], v.shape[2]
  qb = plan.q_block
  kernel = functools.partial(_kernel, knn=plan.knn, num_k=plan.num_k, precision=plan.precision)
  row = lambda b, i: (b, i, 0)
  whole = lambda b, i: (b, 0, 0)
  out, lse, thresh = pl.pallas_call(
      kernel,
      grid=(num_bh, num_q // qb),
      in_specs=[pl.BlockSpec((None, qb, depth), row),
                pl.BlockSpec((None, width, depth), whole),
                pl.BlockSpec((None, width, dv), whole)],
      out_specs=[pl.BlockSpec((None, qb, dv), row),
                 pl.BlockSpec((None, qb, 1), row),
                 pl.BlockSpec((None, qb, 1), row)],
      out_shape=[jax.ShapeDtypeStruct((num_bh, num_q, dv), plan.out_dtype),
                 jax.ShapeDtypeStruct((num_bh, num_q, 1), jnp.float32),
                 jax.ShapeDtypeStruct((num_bh, num_q, 1), jnp.float32)],
      interpret=interpret,
      compiler_params=None if interpret else _compiler_params(backend or jax.default_backend()),
      name="knn_attention" if plan.knn is not None else "dense_attention",
  )(q, k, v)
  return out, lse[..., 0], thresh[..., 0]


_compiled = blocked.with_recomputing_vjp(functools.partial(kernel_forward, interpret=False))
_interpreted = blocked.with_recomputing_vjp(functools.partial(kernel_forward, interpret=True))


def tpu_vmem_bytes(width: int, head_dim: int) -> int:
  """Estimated VMEM of one TPU instance: 4 f32 `[128, W]` arrays + double-buffered f32 K, V."""
  return 4 * Q_BLOCK["tpu"] * width * 4 + 2 * 2 * width * head_dim * 4


def key_width(backend: str, num_keys: int) -> int:
  """Padded key count: a power of two on GPU (Triton's tiles), else a multiple of 128."""
  if backend == "gpu":
    return max(KEY_MULTIPLE, pl.next_power_of_2(num_keys))
  return -(-num_keys // KEY_MULTIPLE) * KEY_MULTIPLE


def supports(backend: str, num_keys: int, head_dim: int) -> bool:
  """Whether the kernel's on-chip blocks fit for `num_keys` keys on `backend` ('tpu', 'gpu')."""
  width = key_width(backend, num_keys)
  if head_dim > _MAX_HEAD_DIM:
    return False
  if backend == "tpu":
    return tpu_vmem_bytes(width, head_dim) <= TPU_VMEM_BUDGET
  # Triton tiles need power-of-two sizes, the head dim included.
  return (backend == "gpu" and width <= GPU_MAX_WIDTH
          and head_dim == pl.next_power_of_2(head_dim))


def check_backend(backend: str) -> None:
  """Raises ValueError naming `impl` unless `backend` compiles the kernel ('tpu', 'gpu')."""
  if backend not in Q_BLOCK:
    raise ValueError(f"impl='pallas' needs a TPU or GPU backend (this one is {backend!r}); "
                     "use impl='pallas_interpret' to run the kernel in the Pallas "
                     "interpreter, or impl='blocked'")


def kernel_attention(query: Array, key: Array, value: Array, knn: Optional[int], *,
                     dtype=None, precision=None, interpret: bool = False) -> Array:
  """`blocked_attention.blocked_attention` with the kernel forward (`interpret`: any backend)."""
  backend = jax.default_backend()
  if not interpret:
    check_backend(backend)
  width = key_width("interpret" if interpret else backend, key.shape[-3])
  return blocked.evaluate(_interpreted if interpret else _compiled, query, key, value, knn,
                          dtype=dtype, precision=precision,
                          q_block=INTERPRET_Q_BLOCK if interpret else Q_BLOCK[backend],
                          key_multiple=width, backward_q_block=None if interpret else -1)
