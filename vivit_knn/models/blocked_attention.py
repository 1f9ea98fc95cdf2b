"""Memory-bounded dense and exact k-NN attention: query blocks and a recomputing backward pass.

Each block of `q_block` queries forms its `[BH, q_block, Nk]` logits, finds each
row's k-NN threshold (`kth_largest.kth_largest_rows`) and takes the softmax-weighted
sum of the values; blocks hold whole rows, so the softmax is exact in one step. The
backward pass (`jax.custom_vjp`, as in flash attention) keeps only the inputs and
each row's log-sum-exp and threshold, and recomputes every block's logits, so the
kept set is the forward's and memory grows linearly in N. The threshold carries no
gradient; ties at it are kept. No bias, mask or dropout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vivit_knn.models import kth_largest as kth

Array = jax.Array

# float32 logits per block: 16 MiB; 4 MiB on CPU, closer to the caches (about twice as fast).
BLOCK_ELEMS = 1 << 22
CPU_BLOCK_ELEMS = 1 << 20
MIN_Q_BLOCK = 8
MAX_Q_BLOCK = 512


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static, hashable (for `custom_vjp`) plan of one call; `knn`: kept keys (None: dense)."""

  knn: Optional[int]
  num_k: int
  width: int
  q_block: int
  precision: Any
  out_dtype: Any
  backward_q_block: Optional[int] = None


def plan_q_block(num_bh: int, num_q: int, width: int, block_elems: Optional[int] = None) -> int:
  """Queries per block: about `block_elems` logits, a multiple of 8 in [8, min(512, num_q)]."""
  if block_elems is None:
    block_elems = CPU_BLOCK_ELEMS if jax.default_backend() == "cpu" else BLOCK_ELEMS
  rows = block_elems // max(1, num_bh * width)
  rows = min(max(rows, MIN_Q_BLOCK), MAX_Q_BLOCK, -(-num_q // 8) * 8)
  return max(MIN_Q_BLOCK, rows // 8 * 8)


def _logits(q: Array, k: Array, plan: Plan) -> Array:
  """`[BH, qb, d] x [BH, W, d] -> [BH, qb, W]` float32 scaled logits."""
  scale = q.shape[-1] ** -0.5
  return jnp.einsum("bqd,bkd->bqk", q, k, precision=plan.precision,
                    preferred_element_type=jnp.float32) * scale


def _keep(logits: Array, thresh: Optional[Array], plan: Plan) -> Optional[Array]:
  """Boolean `[BH, qb, W]` of the entries that enter the softmax (None: all)."""
  keep = None if thresh is None else logits >= thresh
  if plan.width != plan.num_k:
    valid = jnp.asarray(np.arange(plan.width) < plan.num_k)
    keep = valid if keep is None else keep & valid
  return keep


def block_threshold(logits: Array, plan: Plan) -> Array:
  """Each row's k-th largest logit `[BH, qb, 1]` (padding columns ignored)."""
  layout = kth.row_layout(plan.num_k)
  assert layout.padded == plan.width, (layout, plan)
  rows = lax.stop_gradient(logits).reshape(-1, plan.width)
  return kth.kth_largest_rows(rows, plan.knn, plan.num_k, layout).reshape(
      logits.shape[:-1] + (1,))


def forward_block(q: Array, k: Array, v: Array, plan: Plan) -> Tuple[Array, Array, Array]:
  """One query block: `(out [BH, qb, dv], lse [BH, qb], thresh [BH, qb])` (-inf: dense)."""
  logits = _logits(q, k, plan)
  thresh = None if plan.knn is None else block_threshold(logits, plan)
  keep = _keep(logits, thresh, plan)
  if keep is not None:
    logits = jnp.where(keep, logits, -jnp.inf)
  peak = jnp.max(logits, axis=-1, keepdims=True)
  unnorm = jnp.exp(logits - peak)
  total = jnp.sum(unnorm, axis=-1, keepdims=True)
  weights = unnorm / total
  out = jnp.einsum("bqk,bkd->bqd", weights.astype(v.dtype), v, precision=plan.precision,
                   preferred_element_type=jnp.float32)
  lse = (peak + jnp.log(total))[..., 0]
  thresh = jnp.full(lse.shape, -jnp.inf, jnp.float32) if thresh is None else thresh[..., 0]
  return out.astype(plan.out_dtype), lse, thresh


def _split(x: Array, q_block: int) -> Array:
  """`[BH, Nq, ...] -> [Nq / q_block, BH, q_block, ...]`."""
  return jnp.swapaxes(x.reshape((x.shape[0], -1, q_block) + x.shape[2:]), 0, 1)


def _merge(x: Array) -> Array:  # the inverse of `_split`
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape((x.shape[0], -1) + x.shape[3:])


def blocked_forward(q: Array, k: Array, v: Array, plan: Plan) -> Tuple[Array, Array, Array]:
  """All query blocks in a loop: `(out [BH, Nq, dv], lse [BH, Nq], thresh [BH, Nq])`."""
  blocks = _split(q, plan.q_block)
  if blocks.shape[0] == 1:
    return forward_block(blocks[0], k, v, plan)
  out, lse, thresh = lax.map(lambda qb: forward_block(qb, k, v, plan), blocks)
  return _merge(out), _merge(lse), _merge(thresh)


def blocked_backward(plan: Plan, q: Array, k: Array, v: Array, lse: Array, thresh: Array,
                     dout: Array) -> Tuple[Array, Array, Array]:
  """Gradients `(dq, dk, dv)`; each block's logits are recomputed, dk and dv summed in float32."""
  f32 = jnp.float32
  num_q = q.shape[1]
  q_block = plan.backward_q_block or plan.q_block
  extra = -num_q % q_block
  if extra:  # zero queries with zero cotangents contribute nothing
    pad = lambda x: jnp.pad(x, ((0, 0), (0, extra)) + ((0, 0),) * (x.ndim - 2))
    q, dout, lse, thresh = pad(q), pad(dout), pad(lse), pad(thresh)
  kf, vf = k.astype(f32), v.astype(f32)
  scale = q.shape[-1] ** -0.5
  knn = plan.knn is not None

  def step(carry, xs):
    dk, dv = carry
    qb, dob, lse_b, th_b = xs
    logits = _logits(qb, k, plan)
    keep = _keep(logits, th_b[..., None] if knn else None, plan)
    probs = jnp.exp(logits - lse_b[..., None])
    if keep is not None:
      probs = jnp.where(keep, probs, 0.0)
    dob = dob.astype(f32)
    dprobs = jnp.einsum("bqd,bkd->bqk", dob, vf, precision=plan.precision)
    dlogits = probs * (dprobs - jnp.sum(probs * dprobs, axis=-1, keepdims=True))
    dq = jnp.einsum("bqk,bkd->bqd", dlogits, kf, precision=plan.precision) * scale
    dk = dk + jnp.einsum("bqk,bqd->bkd", dlogits, qb.astype(f32),
                         precision=plan.precision) * scale
    dv = dv + jnp.einsum("bqk,bqd->bkd", probs, dob, precision=plan.precision)
    return (dk, dv), dq

  init = (jnp.zeros(k.shape, f32), jnp.zeros(v.shape, f32))
  xs = tuple(_split(x, q_block) for x in (q, dout, lse, thresh))
  (dk, dv), dq = lax.scan(step, init, xs)
  return _merge(dq)[:, :num_q].astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def with_recomputing_vjp(forward: Callable[[Array, Array, Array, Plan],
                                           Tuple[Array, Array, Array]]) -> Callable[..., Array]:
  """`(q, k, v, plan) -> out` of `forward` (`(out, lse, thresh)`), VJP `blocked_backward`."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
  def attention(q, k, v, plan):
    return forward(q, k, v, plan)[0]

  def fwd(q, k, v, plan):
    out, lse, thresh = forward(q, k, v, plan)
    return out, (q, k, v, lse, thresh)

  def bwd(plan, res, dout):
    return blocked_backward(plan, *res, dout)

  attention.defvjp(fwd, bwd)
  return attention


_blocked = with_recomputing_vjp(blocked_forward)


def heads_major(x: Array) -> Array:
  """`[..., N, H, d] -> [B*H, N, d]` (B the product of the leading axes)."""
  x = jnp.moveaxis(x, -2, -3)
  return x.reshape((-1,) + x.shape[-2:])


def heads_minor(x: Array, batch: Tuple[int, ...], heads: int) -> Array:
  """Inverse of `heads_major`: `[B*H, N, d] -> [..., N, H, d]`."""
  x = x.reshape(batch + (heads,) + x.shape[-2:])
  return jnp.moveaxis(x, -3, -2)


def prepare(query: Array, key: Array, value: Array, knn: Optional[int], *,
            dtype: Any = None, precision: Any = None, q_block: Optional[int] = None,
            key_multiple: Optional[int] = None,
            backward_q_block: Optional[int] = None) -> Tuple[Array, Array, Array, Plan]:
  """Heads-major `(q, k, v, plan)`, zero-padded (the padding is dropped from the output).

  Keys to a multiple of `key_multiple` (default: the k-NN row length), queries to the
  block size. `backward_q_block=-1`: `plan_q_block`'s choice.
  """
  num_q, heads = query.shape[-3:-1]
  num_k = key.shape[-3]
  num_bh = math.prod(query.shape[:-3]) * heads
  if key_multiple:
    width = -(-num_k // key_multiple) * key_multiple
  else:
    width = num_k if knn is None else kth.row_layout(num_k).padded
  q_block = q_block or plan_q_block(num_bh, num_q, width)
  q, k, v = heads_major(query), heads_major(key), heads_major(value)
  if width != num_k:
    pad = ((0, 0), (0, width - num_k), (0, 0))
    k, v = jnp.pad(k, pad), jnp.pad(v, pad)
  num_q_pad = -(-num_q // q_block) * q_block
  if num_q_pad != num_q:
    q = jnp.pad(q, ((0, 0), (0, num_q_pad - num_q), (0, 0)))
  if backward_q_block == -1:
    backward_q_block = plan_q_block(num_bh, num_q, width)
  plan = Plan(knn=knn, num_k=num_k, width=width, q_block=q_block, precision=precision,
              out_dtype=jnp.dtype(dtype or query.dtype), backward_q_block=backward_q_block)
  return q, k, v, plan


def evaluate(run: Callable[..., Array], query: Array, key: Array, value: Array,
             knn: Optional[int], **options: Any) -> Array:
  """`run(q, k, v, plan)` on `prepare(query, key, value, knn, **options)`, as `[..., Nq, H, dv]`."""
  out = run(*prepare(query, key, value, knn, **options))[:, :query.shape[-3]]
  return heads_minor(out, query.shape[:-3], query.shape[-2])


def blocked_attention(query: Array, key: Array, value: Array, knn: Optional[int], *,
                      dtype: Any = None, precision: Any = None,
                      q_block: Optional[int] = None,
                      backward_q_block: Optional[int] = None) -> Array:
  """Dense (`knn` None) or k-NN (`knn` keys kept) attention in query blocks, recomputing VJP.

  Query, key and value `[..., N, H, d]` share leading axes and heads; see `prepare`.
  """
  return evaluate(_blocked, query, key, value, knn, dtype=dtype, precision=precision,
                  q_block=q_block, backward_q_block=backward_q_block)
