"""A fused Pallas kernel for dense and exact k-NN attention (the forward pass).

One kernel instance handles one (batch x head) row and one block of `q_block`
queries. It loads the block's queries and all of that head's keys and values,
forms the `[q_block, W]` float32 logits on chip, finds each row's k-th largest
logit, masks the rest to -inf, and writes the softmax-weighted sum of the values
together with each row's log-sum-exp and threshold. The logits never reach HBM.
The backward pass is `blocked_attention.blocked_backward` (an XLA program that
recomputes each query block's logits and compares them with the stored
thresholds, in blocks of `blocked_attention.plan_q_block` queries); it needs only
O(N) saved values per row. Ties are kept identically in both passes as long as
the kernel's and XLA's dot products give the same float32 logits; on CPU (the
interpreter) they do, which the tests check at many exact ties.

k-th largest inside the kernel: the logits are mapped to int32 keys with the same
order as the floats, and the answer is built one bit at a time from the most
significant (32 steps; each step counts, per row, the keys >= the candidate). This
is exact, needs no sort, and ties at the threshold are all kept, as in
`kth_largest.knn_mask_logits`.

Block sizes (W = key count padded to a multiple of 128 on TPU, to a power of two of
at least 128 on GPU; d = head dim; f32 logits):

* TPU (Mosaic): `q_block` = 128. On chip per instance: the logits and about three
  temporaries of the same size (int32 keys, the masked exponentials, the comparison
  being counted), 4 x 128 x W x 4 B, plus double-buffered K and V blocks,
  2 x 2 x W x d x 4 B. At W = 3200 (ViViT's 3,137 tokens) and d = 64 that is
  6.6 MB + 3.3 MB = 9.8 MB, inside the 16 MiB default scoped VMEM of v5e (32 MiB on
  v4/v5p/v6e). `supports` accepts shapes whose estimate (`tpu_vmem_bytes`) is at
  most 12 MiB: W <= 4096 at d = 64, W <= 3072 at d = 128.
* GPU (Triton): `q_block` = 16 (the smallest tile a Triton dot takes). A program
  keeps its tiles in registers: an H100/H200 SM has 64K 32-bit registers (256 KB)
  and one program may use at most 255 per thread. Logits plus int32 keys are
  2 x 16 x W values; with 8 warps (256 threads) and W = 512 that is 64 registers
  per thread, which fits next to the q, k and v tiles. A 3,137-token row
  (W = 4096: 2 x 16 x 4096 = 128K values) does not fit in one SM's registers or its 228 KB
  shared memory, so `supports` accepts W <= 512 on GPU; longer rows would need the
  keys streamed in tiles in two passes (a threshold pass that recounts every tile
  32 times, then a softmax pass), which is not implemented: they take the blocked
  XLA path.

Correctness is checked on CPU with `interpret=True` (the Pallas interpreter,
`impl='pallas_interpret'`), which runs the same kernel body as XLA operations.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from vivit_knn.models import blocked_attention as blocked

Array = jax.Array

KEY_MULTIPLE = 128  # keys are padded to a multiple of the TPU lane width
Q_BLOCK = {"tpu": 128, "gpu": 16}
INTERPRET_Q_BLOCK = 8
TPU_VMEM_BUDGET = 12 << 20
GPU_MAX_WIDTH = 512
_MAX_HEAD_DIM = 128
_SIGN = -(2 ** 31)  # int32 with only the sign bit set


def _sortable(x: Array) -> Array:
  """float32 -> int32 whose signed order is the float order."""
  bits = lax.bitcast_convert_type(x, jnp.int32)
  return bits ^ ((bits >> 31) & jnp.int32(0x7FFFFFFF))


def _from_sortable(key: Array) -> Array:
  """Inverse of `_sortable`."""
  return lax.bitcast_convert_type(key ^ ((key >> 31) & jnp.int32(0x7FFFFFFF)), jnp.float32)


def kth_largest_bits(x: Array, k: int) -> Array:
  """Exact k-th largest of each row of float32 `x` `[R, W]` as `[R, 1]`, by 32-step bisection.

  The answer is built in the unsigned order of the int32 keys (sign bit flipped),
  most significant bit first: a bit is kept when at least k keys are >= the
  candidate. Duplicates count separately, so ties give the tied value.
  """
  keys = _sortable(x)

  def step(i, prefix):
    cand = prefix | jnp.left_shift(jnp.int32(1), 31 - i)
    count = jnp.sum((keys >= (cand ^ jnp.int32(_SIGN))).astype(jnp.int32), axis=-1,
                    keepdims=True)
    return jnp.where(count >= k, cand, prefix)

  prefix = lax.fori_loop(0, 32, step, jnp.zeros((x.shape[0], 1), jnp.int32))
  return _from_sortable(prefix ^ jnp.int32(_SIGN))


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
  if backend not in Q_BLOCK:  # the interpreter
    return None
  if backend == "gpu":
    from jax.experimental.pallas import triton as pl_triton  # pylint: disable=g-import-not-at-top
    return pl_triton.CompilerParams(num_warps=8, num_stages=1)
  from jax.experimental.pallas import tpu as pl_tpu  # pylint: disable=g-import-not-at-top
  return pl_tpu.CompilerParams(dimension_semantics=("parallel", "parallel"))


def kernel_forward(q: Array, k: Array, v: Array, plan: blocked.Plan, *,
                   interpret: bool, backend: Optional[str] = None) -> Tuple[Array, Array, Array]:
  """The kernel over heads-major padded inputs: `(out, lse, thresh)` as `blocked_forward`.

  `backend` ('tpu' or 'gpu', default: the default backend) picks the compiler
  parameters, and so the lowering (Mosaic TPU, or Triton on GPU); it is ignored
  when interpreting.
  """
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
  """Dense (`knn` None) or k-NN attention through the fused kernel, with a recomputing VJP.

  Args:
    query: `[..., Nq, H, d]`.
    key: `[..., Nk, H, d]` (same leading axes and heads as `query`).
    value: `[..., Nk, H, dv]`.
    knn: keys kept per query (an int in `[1, Nk]`, already resolved), or None.
    dtype: output dtype (default: the query's).
    precision: matmul precision.
    interpret: run the kernel in the Pallas interpreter (any backend; slow, for tests).

  Returns:
    `[..., Nq, H, dv]`, equal to `blocked_attention.blocked_attention`.

  Raises:
    ValueError: naming `impl` when not interpreting on a backend without the kernel
      (`check_backend`).
  """
  backend = jax.default_backend()
  if not interpret:
    check_backend(backend)
  q_block = INTERPRET_Q_BLOCK if interpret else Q_BLOCK[backend]
  batch = query.shape[:-3]
  num_q, heads = query.shape[-3:-1]
  width = key_width("interpret" if interpret else backend, key.shape[-3])
  q, k, v, plan = blocked.prepare(query, key, value, knn, dtype=dtype, precision=precision,
                                  q_block=q_block, key_multiple=width,
                                  backward_q_block=None if interpret else -1)
  run = _interpreted if interpret else _compiled
  out = run(q, k, v, plan)[:, :num_q]
  return blocked.heads_minor(out, batch, heads)
