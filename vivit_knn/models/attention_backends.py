"""Dense and exact k-NN scaled dot-product attention, and the choice of evaluation path.

Layout as in flax (`attention`). k-NN attention keeps, per query, the keys whose logits
are at least its k-th largest logit (`kth_largest`) and masks the rest to -inf.

Paths (`AttentionSpec.impl`, see `choose_impl`): 'xla' (cuDNN flash attention for
plain half-precision dense attention on GPU; on CPU blocks of (batch x head) rows
that stay in cache; else all logits at once), 'blocked' (`blocked_attention`),
'pallas' / 'pallas_interpret' (`knn_kernel`), and 'auto': 'xla', or 'blocked'
when one layer's float32 logits exceed `AUTO_BLOCKED_BYTES`. Bias, mask, dropout
and `cpu_paths.disabled()` always take 'xla'.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vivit_knn.models import blocked_attention as blocked
from vivit_knn.models import cpu_paths
from vivit_knn.models import knn_kernel
from vivit_knn.models import kth_largest as kth

Array = jax.Array
Dtype = Any
Spec = Any  # an `attention.AttentionSpec` (that module imports this one)
PrecisionLike = Union[None, str, lax.Precision, Tuple[Any, Any]]
KnnK = Optional[Union[int, float]]

# Masked logits get this finite value (as in flax): a fully masked row has a uniform softmax.
_MASK_VALUE = float(np.finfo(np.float32).min)

# On CPU, attention is evaluated in blocks of at most _BLOCK_ELEMS logits.
_BLOCK_ELEMS = 1 << 20
_MIN_Q_BLOCK = 64  # query blocks of a split head have at least this many rows

IMPLS = ("auto", "xla", "blocked", "pallas", "pallas_interpret")
# 'auto' takes 'blocked' when one layer's float32 logits (B x H x Nq x Nk x 4 bytes) exceed this.
AUTO_BLOCKED_BYTES = 64 << 20


def resolve_knn_k(k: KnnK, num_keys: int) -> int:
  """The keys each query keeps for `knn_k=k` of `num_keys`; ValueError naming `knn_k` if bad.

  An int `k` in `[1, num_keys]` as is; a float in `(0, 1]` as `floor(k * num_keys + 0.5)`
  clamped to `[1, num_keys]` (1.0: all keys).
  """
  num_keys = int(num_keys)
  if num_keys < 1:
    raise ValueError(f"knn_k needs at least one key token, got {num_keys} tokens")
  if k is None or isinstance(k, (bool, np.bool_)):
    raise ValueError(f"knn_k must be an int in [1, {num_keys}] or a fraction in (0, 1] "
                     f"for {num_keys} tokens, got {k!r}")
  if isinstance(k, numbers.Integral):
    if not 1 <= int(k) <= num_keys:
      raise ValueError(f"knn_k={int(k)} is outside [1, {num_keys}] for {num_keys} tokens")
    return int(k)
  if isinstance(k, numbers.Real):
    frac = float(k)
    if not 0.0 < frac <= 1.0:  # also rejects nan
      raise ValueError(f"knn_k={frac!r} as a fraction must be in (0, 1] "
                       f"({num_keys} tokens); pass an int for a count")
    return min(max(int(math.floor(frac * num_keys + 0.5)), 1), num_keys)
  raise ValueError(f"knn_k must be an int or a float for {num_keys} tokens, got {k!r}")


def attention_logits(query: Array, key: Array, *, bias: Optional[Array] = None,
                     mask: Optional[Array] = None, precision: PrecisionLike = None) -> Array:
  """Scaled float32 logits `[..., H, Nq, Nk]`, plus `bias`, with `mask=False` entries masked."""
  scale = query.shape[-1] ** -0.5
  logits = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision,
                      preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + jnp.asarray(bias).astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(jnp.asarray(mask, dtype=bool), logits, _MASK_VALUE)
  return logits


def _global_attention(query, key, value, *, knn, bias, mask, dropout_rng, dropout_rate,
                      deterministic, out_dtype, precision):
  """All logits `[..., H, Nq, Nk]` at once; supports bias, mask and dropout."""
  logits = attention_logits(query, key, bias=bias, mask=mask, precision=precision)
  if knn is not None:
    logits = kth.knn_mask_logits(logits, knn)
  weights = jax.nn.softmax(logits, axis=-1)
  if not deterministic and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("...hqk,...khd->...qhd", weights.astype(value.dtype), value,
                   precision=precision, preferred_element_type=jnp.float32)
  return out.astype(out_dtype)


def _plan_blocks(num_bh: int, num_q: int, width: int, block_elems: int,
                 min_q_block: int) -> Tuple[int, int, int, int]:
  """`(group, num_bh_pad, q_block, num_q_pad)`: `group` items of `q_block` queries per block."""
  if num_q * width <= block_elems:  # several whole heads per block
    limit = block_elems // (num_q * width)
    group = kth.block_size(num_bh, limit)
    return group, -(-num_bh // group) * group, num_q, num_q
  # One head per block, its queries split into blocks.
  limit = min(num_q, max(min_q_block, block_elems // width))
  q_block = kth.block_size(num_q, limit)
  return 1, num_bh, q_block, -(-num_q // q_block) * q_block


@functools.partial(jax.jit, static_argnames=("out_dtype", "precision", "block_elems",
                                             "min_q_block"))
def _blockwise_attention(query, key, value, *, knn, out_dtype, precision, block_elems,
                         min_q_block):
  """The attention in `lax.map` blocks of at most `block_elems` logits (heads or query rows)."""
  batch = query.shape[:-3]
  num_q, heads, depth = query.shape[-3:]
  num_k = key.shape[-3]
  num_bh = math.prod(batch) * heads
  q, k, v = (blocked.heads_major(x) for x in (query, key, value))
  width = num_k
  if knn is not None:
    layout = kth.row_layout(num_k)
    width = layout.padded
    if width != num_k:  # zero keys; their logits are dropped by the column mask
      pad = ((0, 0), (0, width - num_k), (0, 0))
      k, v = jnp.pad(k, pad), jnp.pad(v, pad)
    col_valid = jnp.asarray(np.arange(width) < num_k)

  group, num_bh_pad, q_block, num_q_pad = _plan_blocks(num_bh, num_q, width, block_elems,
                                                       min_q_block)
  if num_q_pad != num_q:  # extra zero queries, dropped from the output
    q = jnp.pad(q, ((0, 0), (0, num_q_pad - num_q), (0, 0)))
  if num_bh_pad != num_bh:  # extra zero heads, dropped from the output
    extra = ((0, num_bh_pad - num_bh), (0, 0), (0, 0))
    q, k, v = jnp.pad(q, extra), jnp.pad(k, extra), jnp.pad(v, extra)
  scale = depth ** -0.5

  def attend(qc, kc, vc):  # [g, nq, d], [g, width, d], [g, width, d] -> [g, nq, d]
    logits = jnp.einsum("gqd,gkd->gqk", qc, kc, precision=precision,
                        preferred_element_type=jnp.float32) * scale
    if knn is not None:
      rows = lax.stop_gradient(logits).reshape(-1, width)
      thresh = kth.kth_largest_rows(rows, knn, num_k, layout).reshape(logits.shape[:-1] + (1,))
      logits = jnp.where((logits >= thresh) & col_valid, logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("gqk,gkd->gqd", weights.astype(vc.dtype), vc, precision=precision,
                      preferred_element_type=jnp.float32)

  def block(args):
    qc, kc, vc = args  # [g, nq/qb, qb, d], [g, width, d], [g, width, d]
    if qc.shape[1] == 1:
      return attend(qc[:, 0], kc, vc)[:, None]
    out = lax.map(lambda qb: attend(qb, kc, vc), jnp.swapaxes(qc, 0, 1))
    return jnp.swapaxes(out, 0, 1)

  qb = q.reshape(num_bh_pad // group, group, num_q_pad // q_block, q_block, depth)
  kb = k.reshape(num_bh_pad // group, group, width, depth)
  vb = v.reshape(num_bh_pad // group, group, width, v.shape[-1])
  if num_bh_pad == group:
    out = block((qb[0], kb[0], vb[0]))[None]
  else:
    out = lax.map(block, (qb, kb, vb))
  out = out.reshape(num_bh_pad, num_q_pad, v.shape[-1])[:num_bh, :num_q]
  return blocked.heads_minor(out, batch, heads).astype(out_dtype)


def check_impl(impl: str, field: str = "attention.impl") -> None:
  """Raises ValueError naming `field` unless `impl` is one of `IMPLS`."""
  if impl not in IMPLS:
    raise ValueError(f"{field} must be one of {IMPLS}, got {impl!r}")


def choose_impl(impl: str, query: Array, key: Array, knn: Optional[int], *,
                plain: bool) -> str:
  """The evaluation path for `impl`: 'xla', 'blocked', 'pallas' or 'pallas_interpret'.

  `plain`: no bias, mask or attention dropout, and q, k, v share leading axes and heads;
  ValueError naming `impl` if unknown, forced without `plain`, or 'pallas' off TPU/GPU.
  """
  check_impl(impl)
  if impl == "xla":
    return impl
  if impl != "auto":
    if not plain:
      raise ValueError(f"attention impl={impl!r} supports no bias, mask or attention dropout "
                       "(and needs matching query/key/value heads); use impl='auto' or 'xla'")
    if impl == "pallas":
      knn_kernel.check_backend(jax.default_backend())
    return impl
  if not plain or cpu_paths.one_piece_requested():
    return "xla"
  logit_bytes = 4 * math.prod(query.shape[:-3]) * query.shape[-2] * query.shape[-3] * key.shape[-3]
  if logit_bytes <= AUTO_BLOCKED_BYTES:
    return "xla"
  if knn is None and _flash_eligible(query, key):
    return "xla"  # cuDNN flash attention is memory-bounded already
  return "blocked"


def _attend(query: Array, key: Array, value: Array, knn: Optional[int], *,
            bias: Optional[Array] = None, mask: Optional[Array] = None,
            dropout_rng: Optional[Array] = None, dropout_rate: float = 0.0,
            deterministic: bool = True, dtype: Optional[Dtype] = None,
            precision: PrecisionLike = None, impl: str = "auto") -> Array:
  """Dense (`knn` None) or k-NN attention on the path `choose_impl` picks."""
  out_dtype = dtype or query.dtype
  use_dropout = not deterministic and dropout_rate > 0.0
  if use_dropout and dropout_rng is None:
    raise ValueError("dropout_rng is required when dropout_rate > 0 and not deterministic")
  same_layout = (query.shape[:-3] == key.shape[:-3] == value.shape[:-3]
                 and query.shape[-2] == key.shape[-2] == value.shape[-2])
  plain = same_layout and bias is None and mask is None and not use_dropout
  path = choose_impl(impl, query, key, knn, plain=plain)
  if path == "blocked":
    return blocked.blocked_attention(query, key, value, knn, dtype=out_dtype,
                                     precision=precision)
  if path in ("pallas", "pallas_interpret"):
    return knn_kernel.kernel_attention(query, key, value, knn, dtype=out_dtype,
                                       precision=precision,
                                       interpret=path == "pallas_interpret")
  if plain and knn is None and _flash_eligible(query, key):
    try:
      return flash_dense_attention(query, key, value).astype(out_dtype)
    except (ValueError, NotImplementedError, RuntimeError):
      pass  # cuDNN rejected this shape or version: use the XLA path below
  if cpu_paths.enabled() and plain:
    knn = None if knn is None else jnp.int32(knn)
    return _blockwise_attention(query, key, value, knn=knn, out_dtype=jnp.dtype(out_dtype),
                                precision=precision, block_elems=_BLOCK_ELEMS,
                                min_q_block=_MIN_Q_BLOCK)
  return _global_attention(query, key, value, knn=knn, bias=bias, mask=mask,
                           dropout_rng=dropout_rng, dropout_rate=dropout_rate,
                           deterministic=deterministic, out_dtype=out_dtype,
                           precision=precision)


def flash_dense_attention(query: Array, key: Array, value: Array, *,
                          implementation: Optional[str] = "cudnn", pad_to: int = 8) -> Array:
  """Dense attention through `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).

  Tokens are padded to a multiple of `pad_to`; `implementation=None` or 'xla': any backend.
  """
  lead = query.shape[:-3]
  nq, nk = query.shape[-3], key.shape[-3]
  flat = lambda x: x.reshape((-1,) + x.shape[-3:])
  q, k, v = flat(query), flat(key), flat(value)
  pq, pk = -nq % pad_to, -nk % pad_to
  pad = lambda x, p: jnp.pad(x, ((0, 0), (0, p), (0, 0), (0, 0))) if p else x
  q, k, v = pad(q, pq), pad(k, pk), pad(v, pk)
  lengths = jnp.full((q.shape[0],), nk, jnp.int32)
  out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                     implementation=implementation)
  return out[:, :nq].reshape(lead + (nq,) + out.shape[-2:])


def _flash_eligible(query: Array, key: Array) -> bool:
  """cuDNN flash attention takes half-precision inputs with head dims that are multiples of 8."""
  d = query.shape[-1]
  return (jax.default_backend() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16)
          and key.dtype == query.dtype and d % 8 == 0 and d <= 128)


def dense_attention(query: Array, key: Array, value: Array, spec: Spec,
                    **options: Any) -> Array:
  """The 'dense' kind: attention over all keys; `options` as `attention.dot_product_attention`."""
  return _attend(query, key, value, None, impl=spec.impl, **options)


def knn_attention(query: Array, key: Array, value: Array, spec: Spec,
                  **options: Any) -> Array:
  """The 'knn' kind: each query keeps its `spec.knn_k` largest logits (ties kept)."""
  knn = resolve_knn_k(spec.knn_k, key.shape[-3])
  return _attend(query, key, value, knn, impl=spec.impl, **options)


def check_knn(spec: Spec, num_keys: int, field: str) -> None:
  """Raises ValueError naming `field` when `spec.knn_k` does not fit `num_keys` keys."""
  try:
    resolve_knn_k(spec.knn_k, num_keys)
  except ValueError as err:
    raise ValueError(f"{field}.knn_k={spec.knn_k!r} does not fit the {num_keys} tokens "
                     f"this attention sees: {err}") from None
