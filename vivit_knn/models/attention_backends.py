"""The attention kinds' implementations: dense and exact k-NN scaled dot-product attention.

Layout (as in flax): query `[..., Nq, H, d]`, key/value `[..., Nk, H, d]`, output
`[..., Nq, H, d]`; the leading `...` are batch dimensions. Every kind function has
the signature of `dense_attention` and is listed in `attention.ATTENTION_KINDS`.

k-NN attention keeps, for every query, only the keys whose logits are at least the
k-th largest logit of that query (found exactly by `kth_largest`), and masks the
others to -inf before the softmax.

Evaluation paths, chosen by the spec's `impl` (see `choose_impl`):

* 'xla': on CPU, one block of (batch x head) rows at a time, so the logits of a
  block stay in cache while they are searched and soft-maxed (about twice as fast
  as materialising all logits at once); elsewhere, and whenever a bias, a mask or
  attention dropout is used, all logits in one piece. Plain half-precision dense
  attention on GPU goes to cuDNN flash attention.
* 'blocked': query blocks with a recomputing backward pass
  (`blocked_attention`): temporary memory grows linearly in the token count.
* 'pallas': the fused kernel (`knn_kernel`) on TPU or GPU; 'pallas_interpret'
  runs the same kernel in the Pallas interpreter on any backend (for tests).
* 'auto' (the default): 'xla', unless one layer's materialised float32 logits
  would exceed `AUTO_BLOCKED_BYTES`; then the kernel where it is enabled for the
  backend and fits the shapes, else 'blocked'. Bias, mask and attention dropout
  always take 'xla', and so does everything inside `cpu_paths.disabled()` (the
  loop-free form that cost analysis needs); forcing another path with bias, mask
  or dropout is an error.
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

# Masked logits (`mask=False`) get this value, as in flax: finite, so a fully masked
# row still has a well-defined (uniform) softmax.
_MASK_VALUE = float(np.finfo(np.float32).min)

# On CPU, attention is evaluated in blocks of at most _BLOCK_ELEMS logits.
_BLOCK_ELEMS = 1 << 20
_MIN_Q_BLOCK = 64  # query blocks of a split head have at least this many rows

# The evaluation paths a spec's `impl` names (see the module doc).
IMPLS = ("auto", "xla", "blocked", "pallas", "pallas_interpret")
# 'auto' leaves the one-piece / CPU paths when one layer's float32 logits
# (batch x heads x Nq x Nk x 4 bytes, as the attention sees its inputs) exceed this.
AUTO_BLOCKED_BYTES = 64 << 20
# Backends on which 'auto' uses the fused kernel. Empty until the kernel has been
# compiled and checked on that hardware; until then 'auto' takes 'blocked' there.
AUTO_PALLAS_BACKENDS: Tuple[str, ...] = ()


# --------------------------------------------------------------------------------------
# k resolution.


def resolve_knn_k(k: KnnK, num_keys: int) -> int:
  """Returns the number of keys each query keeps for `knn_k=k` and `num_keys` keys.

  `k` is either an int count in `[1, num_keys]`, or a float fraction in `(0, 1]`
  of the keys, which becomes `round(k * num_keys)` rounded half up
  (`floor(k * num_keys + 0.5)`), clamped to `[1, num_keys]`. Note that the float
  `1.0` means all keys while the int `1` means a single key.

  Raises:
    ValueError: naming `knn_k` and the token count when `k` is None, a bool, not a
      number, an int outside `[1, num_keys]` or a float outside `(0, 1]`.
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


# --------------------------------------------------------------------------------------
# Evaluation paths.


def attention_logits(query: Array, key: Array, *, bias: Optional[Array] = None,
                     mask: Optional[Array] = None, precision: PrecisionLike = None) -> Array:
  """Scaled float32 logits `[..., H, Nq, Nk]`, plus `bias`, with `mask=False` entries masked.

  Masked entries get a finite minimum (as in flax), so a fully masked row has a
  uniform softmax.
  """
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
  """Splits `num_bh` (batch x head) items of `num_q x width` logits into blocks.

  Returns `(group, num_bh_pad, q_block, num_q_pad)`: each block holds `group`
  items of `q_block` queries, after padding the items to `num_bh_pad` and the
  queries to `num_q_pad` when no divisor gives reasonably sized blocks.
  """
  if num_q * width <= block_elems:  # several whole heads per block
    limit = block_elems // (num_q * width)
    group = kth.largest_divisor_at_most(num_bh, limit)
    if 4 * group < min(limit, num_bh):
      group = min(limit, num_bh)
    return group, -(-num_bh // group) * group, num_q, num_q
  # One head per block, its queries split into blocks.
  limit = min(num_q, max(min_q_block, block_elems // width))
  q_block = kth.largest_divisor_at_most(num_q, limit)
  if 4 * q_block < limit:
    q_block = limit
  return 1, num_bh, q_block, -(-num_q // q_block) * q_block


@functools.partial(jax.jit, static_argnames=("out_dtype", "precision", "block_elems",
                                             "min_q_block"))
def _blockwise_attention(query, key, value, *, knn, out_dtype, precision, block_elems,
                         min_q_block):
  """The same attention computed for groups of (batch x head) rows inside `lax.map`.

  A block holds at most `block_elems` logits: several heads, or the queries of one
  head split into blocks of at least `min_q_block` rows.
  """
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

  `plain` says the call has no bias, mask or attention dropout and query, key and
  value share their leading axes and heads (the blocked paths need all of that).

  Raises:
    ValueError: naming `impl` for an unknown value, for 'blocked' / 'pallas' without
      `plain`, and for 'pallas' on a backend that has no kernel.
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
  backend = jax.default_backend()
  if (backend in AUTO_PALLAS_BACKENDS
      and knn_kernel.supports(backend, key.shape[-3], query.shape[-1])):
    return "pallas"
  return "blocked"


def _attend(query: Array, key: Array, value: Array, knn: Optional[int], *,
            bias: Optional[Array] = None, mask: Optional[Array] = None,
            dropout_rng: Optional[Array] = None, dropout_rate: float = 0.0,
            deterministic: bool = True, dtype: Optional[Dtype] = None,
            precision: PrecisionLike = None, impl: str = "auto") -> Array:
  """Dense attention (`knn` None) or k-NN attention keeping each query's `knn` largest logits.

  Picks the evaluation path with `choose_impl`. On 'xla': cuDNN flash attention
  for plain half-precision dense attention on GPU, blocks of (batch x head) rows
  on CPU, else all logits at once.
  """
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


FLASH_DTYPES = (jnp.bfloat16, jnp.float16)


def flash_dense_attention(query: Array, key: Array, value: Array, *,
                          implementation: Optional[str] = "cudnn", pad_to: int = 8) -> Array:
  """Dense attention through `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).

  Token counts are padded up to a multiple of `pad_to` (ViT token counts such as
  197 or 785 are odd); padded keys are excluded with `key_value_seq_lengths` and
  padded queries dropped, so the result equals unpadded dense attention.
  `implementation=None` or 'xla' runs the same padding on any backend.
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
  return (jax.default_backend() == "gpu" and query.dtype in FLASH_DTYPES
          and key.dtype == query.dtype and d % 8 == 0 and d <= 128)


def _impl(spec: Spec) -> str:
  """The spec's evaluation path (`AttentionSpec.impl`; 'auto' for specs without one)."""
  return getattr(spec, "impl", "auto")


def dense_attention(query: Array, key: Array, value: Array, spec: Spec,
                    **options: Any) -> Array:
  """Scaled dot-product attention over all keys (the 'dense' kind).

  Args:
    query: `[..., Nq, H, d]`.
    key: `[..., Nk, H, d]`.
    value: `[..., Nk, H, d]`.
    spec: the attention spec; only its `impl` (evaluation path) is used.
    **options: `bias`, `mask`, `dropout_rng`, `dropout_rate`, `deterministic`,
      `dtype`, `precision`, as for `attention.dot_product_attention`.

  Returns:
    `[..., Nq, H, d]`.
  """
  return _attend(query, key, value, None, impl=_impl(spec), **options)


def knn_attention(query: Array, key: Array, value: Array, spec: Spec,
                  **options: Any) -> Array:
  """k-NN attention (the 'knn' kind): each query keeps its `spec.knn_k` largest logits.

  The entries below a row's k-th largest logit are set to -inf after bias and
  mask, before the softmax; ties at the threshold are kept. `spec.knn_k` is an
  int count or a float fraction of the keys (see `resolve_knn_k`); `spec.impl`
  picks the evaluation path (`choose_impl`). Arguments as for `dense_attention`.
  """
  knn = resolve_knn_k(spec.knn_k, key.shape[-3])
  return _attend(query, key, value, knn, impl=_impl(spec), **options)


def check_knn(spec: Spec, num_keys: int, field: str) -> None:
  """Raises ValueError naming `field` when `spec.knn_k` does not fit `num_keys` keys."""
  try:
    resolve_knn_k(spec.knn_k, num_keys)
  except ValueError as err:
    raise ValueError(f"{field}.knn_k={spec.knn_k!r} does not fit the {num_keys} tokens "
                     f"this attention sees: {err}") from None
