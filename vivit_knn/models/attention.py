"""The attention every model block uses: dense or exact k-NN scaled dot-product attention.

Layout (as in flax): query `[..., Nq, H, d]`, key/value `[..., Nk, H, d]`, output
`[..., Nq, H, d]`; the leading `...` are batch dimensions.

k-NN attention keeps, for every query, only the keys whose logits are at least the
k-th largest logit of that query, and masks the others to -inf before the softmax.
The k-th largest value is found exactly without sorting (`kth_largest`): the floats
are mapped to integers with the same order, and the threshold is built one bit at a
time from the most significant bit, keeping a bit whenever at least k entries are
still greater than or equal to the candidate. The bits are processed one byte per
phase: each phase first reduces every entry to a single byte relative to the prefix
found so far (0 below it, 255 above it, else the entry's next byte), so that the
eight counting passes of the phase run on a uint8 array.

On CPU both kinds evaluate attention one block of (batch x head) rows at a time, so
the logits of a block stay in cache while they are searched and soft-maxed; this is
about twice as fast as materialising all logits at once. Elsewhere, and whenever a
bias, a mask or attention dropout is used, the logits are computed in one piece.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Dtype = Any
PrecisionLike = Union[None, str, lax.Precision, Tuple[Any, Any]]
KnnK = Optional[Union[int, float]]

ATTENTION_KINDS = ("dense", "knn")

# Masked logits (`mask=False`) get this value, as in flax: finite, so a fully masked
# row still has a well-defined (uniform) softmax.
_MASK_VALUE = float(np.finfo(np.float32).min)

# Counting works on rows padded to a multiple of 32 bytes (one 256-bit vector). A
# row is split into segments of at most 7 such groups, so a segment's count (<= 224)
# fits the uint8 accumulator.
_LANES = 32
_MAX_GROUPS_PER_SEGMENT = 7

# On CPU, rows are searched in chunks of about this many float32 elements (2 MiB),
# and attention is evaluated in blocks of at most _BLOCK_ELEMS logits.
_SEARCH_ELEMS = 1 << 19
_BLOCK_ELEMS = 1 << 20
_MIN_Q_BLOCK = 64  # query blocks of a split head have at least this many rows


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
# Exact k-th largest value.


@dataclasses.dataclass(frozen=True)
class _RowLayout:
  """How a row of n entries is padded and split for the uint8 counting passes."""

  padded: int    # row length after padding, = segments * groups * _LANES
  segments: int  # independent uint8 counts per row
  groups: int    # _LANES-wide groups summed lane-wise inside a segment


@functools.lru_cache(maxsize=None)
def _row_layout(n: int) -> _RowLayout:
  """Picks the padded length (a multiple of 32, a little over n) that counts fastest."""
  base = -(-n // _LANES)
  best = None
  for total_groups in range(base, base + 9):
    groups = max(g for g in range(1, _MAX_GROUPS_PER_SEGMENT + 1) if total_groups % g == 0)
    segments = total_groups // groups
    # Per row, a pass costs about one vector op per group and several per segment
    # (the horizontal add at the end of a segment).
    cost = total_groups + 2 * segments
    if best is None or cost < best[0]:
      best = (cost, _RowLayout(total_groups * _LANES, segments, groups))
  return best[1]


def _sortable_key(x: Array) -> Array:
  """float32 -> int32 whose signed order is the float order (-0.0 just below +0.0)."""
  bits = lax.bitcast_convert_type(x, jnp.int32)
  # Negative floats order backwards: flip their magnitude bits, keep the sign bit.
  return bits ^ ((bits >> 31) & jnp.int32(0x7FFFFFFF))


def _key_to_float(key: Array) -> Array:
  """Inverse of `_sortable_key` (the same xor undoes itself)."""
  return lax.bitcast_convert_type(key ^ ((key >> 31) & jnp.int32(0x7FFFFFFF)), jnp.float32)


def _count_at_least(digits: Array, cand: Array, layout: _RowLayout) -> Array:
  """Per row, how many uint8 `digits` `[R, padded]` are >= `cand` `[R, 1]` (int32 `[R, 1]`)."""
  rows = digits.shape[0]
  d = digits.reshape(rows, layout.segments, layout.groups, _LANES)
  c = cand[:, :, None]
  # Summing the groups lane-wise with explicit adds and then reducing only 32 lanes
  # keeps the whole count in one vectorised uint8 loop; a plain sum over the row
  # makes XLA:CPU materialise the comparison as an int32 array first.
  acc = None
  for g in range(layout.groups):
    hit = (d[:, :, g, :] >= c).astype(jnp.uint8)
    acc = hit if acc is None else acc + hit
  per_segment = jnp.sum(acc, axis=-1, dtype=jnp.uint8)  # <= 224, no wrap-around
  return jnp.sum(per_segment.astype(jnp.int32), axis=-1, keepdims=True)


def _kth_largest_rows(x: Array, k: Union[int, Array], n_valid: int,
                      layout: _RowLayout) -> Array:
  """Exact k-th largest of each row of float32 `x` `[R, padded]`; columns >= n_valid are ignored."""
  rows = x.shape[0]
  key = _sortable_key(x)
  col_mask = None
  if n_valid < layout.padded:
    col_mask = jnp.asarray(np.where(np.arange(layout.padded) < n_valid, 255, 0).astype(np.uint8))

  prefix = None  # int32 [R, 1]: the top 8 * phase bits of the answer's key, rest zero
  for phase in range(4):
    shift = 24 - 8 * phase
    # One byte per entry: 0 if its key is below the prefix, 255 if above, else the
    # entry's byte at `shift`. Counting these against a candidate byte c >= 1 gives
    # exactly the number of keys >= (prefix | c << shift).
    if phase == 0:
      digits = ((key >> 24) + 128).astype(jnp.uint8)
    elif shift:
      digits = jnp.clip((key >> shift) - (prefix >> shift), 0, 255).astype(jnp.uint8)
    else:  # the subtraction above could overflow int32 here
      digits = (jnp.clip(key, prefix, prefix | 255) - prefix).astype(jnp.uint8)
    if col_mask is not None:
      digits = digits & col_mask

    def take_bit(i, byte, digits=digits):
      cand = byte | (jnp.uint8(128) >> i.astype(jnp.uint8))
      return jnp.where(_count_at_least(digits, cand, layout) >= k, cand, byte)

    # A fori_loop, not an unrolled loop: unrolled, XLA fuses the chain of selected
    # bytes into every later count and recomputes it per element (several x slower).
    byte = lax.fori_loop(0, 8, take_bit, jnp.zeros((rows, 1), jnp.uint8)).astype(jnp.int32)
    prefix = (byte - 128) << 24 if phase == 0 else prefix | (byte << shift)
  return _key_to_float(prefix)


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def _largest_divisor_at_most(n: int, limit: int) -> int:
  limit = max(1, min(n, limit))
  return next(d for d in range(limit, 0, -1) if n % d == 0)


@functools.partial(jax.jit, static_argnums=2)
def _kth_largest_2d(x: Array, k: Array, chunk_elems: Optional[int]) -> Array:
  """`kth_largest` for float32 `[R, n]`, n > 0, and a scalar int32 `k`: returns `[R, 1]`.

  Rows are searched `chunk_elems // padded` at a time (all at once if None). `k` is
  traced, so one compilation serves every k.
  """
  num_rows, n = x.shape
  layout = _row_layout(n)
  if layout.padded != n:
    # -inf padding cannot change the k-th largest of n >= k entries.
    x = jnp.pad(x, ((0, 0), (0, layout.padded - n)), constant_values=-jnp.inf)
  search = functools.partial(_kth_largest_rows, k=k, n_valid=layout.padded, layout=layout)
  chunk = num_rows if chunk_elems is None else max(1, chunk_elems // layout.padded)
  if num_rows <= chunk:
    return search(x)
  rows = _largest_divisor_at_most(num_rows, chunk)
  if 4 * rows < chunk:  # no convenient divisor: pad with -inf rows instead
    rows = chunk
    total = -(-num_rows // rows) * rows
    x = jnp.pad(x, ((0, total - num_rows), (0, 0)), constant_values=-jnp.inf)
  out = lax.map(search, x.reshape(-1, rows, layout.padded))
  return out.reshape(-1, 1)[:num_rows]


def kth_largest(x: Array, k: int) -> Array:
  """Exact k-th largest value along the last axis of `x`, shape `x.shape[:-1] + (1,)`.

  Equals `np.sort(x, -1)[..., -k:][..., :1]` (duplicates count separately; -inf
  entries are fine) for float32, bfloat16 and float16 inputs, and returns the input
  dtype. No sort or top_k is used: the values are searched bit by bit on an integer
  encoding of their float32 bits, so the cost is 32 counting passes over `x`
  whatever k is. NaN entries give an unspecified result. The output carries no
  gradient.

  Raises:
    TypeError: for non-float inputs or floats wider than 32 bits.
    ValueError: if `k` is not an int in `[1, x.shape[-1]]`.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype.itemsize > 4:
    raise TypeError(f"kth_largest supports float32/bfloat16/float16 inputs, got {x.dtype}")
  if x.ndim == 0:
    raise ValueError("kth_largest needs at least one axis")
  n = x.shape[-1]
  if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or not 1 <= k <= n:
    raise ValueError(f"k must be an int in [1, {n}], got {k!r}")
  out_shape = x.shape[:-1] + (1,)
  if math.prod(out_shape) == 0:
    return jnp.zeros(out_shape, x.dtype)
  rows = lax.stop_gradient(x).reshape(-1, n).astype(jnp.float32)
  chunk_elems = _SEARCH_ELEMS if _on_cpu() else None
  thresh = _kth_largest_2d(rows, jnp.int32(k), chunk_elems)
  return thresh.reshape(out_shape).astype(x.dtype)


def knn_mask_logits(logits: Array, k: int) -> Array:
  """Sets the entries of each row below its k-th largest value (last axis) to -inf.

  Entries equal to the threshold are all kept, so a row with ties at its k-th
  largest value keeps more than k entries (and a row whose k-th largest is -inf
  keeps all of them). Gradients flow to the kept entries; the threshold itself is
  treated as a constant.
  """
  return jnp.where(logits >= kth_largest(logits, k), logits, -jnp.inf)


# --------------------------------------------------------------------------------------
# Attention.


def _check_kind(kind: str) -> None:
  if kind not in ATTENTION_KINDS:
    raise ValueError(f"kind must be one of {ATTENTION_KINDS}, got {kind!r}")


def _global_attention(query, key, value, *, knn, bias, mask, dropout_rng, dropout_rate,
                      deterministic, out_dtype, precision):
  """All logits `[..., H, Nq, Nk]` at once; supports bias, mask and dropout."""
  scale = query.shape[-1] ** -0.5
  logits = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision,
                      preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + jnp.asarray(bias).astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(jnp.asarray(mask, dtype=bool), logits, _MASK_VALUE)
  if knn is not None:
    logits = knn_mask_logits(logits, knn)
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
    group = _largest_divisor_at_most(num_bh, limit)
    if 4 * group < min(limit, num_bh):
      group = min(limit, num_bh)
    return group, -(-num_bh // group) * group, num_q, num_q
  # One head per block, its queries split into blocks.
  limit = min(num_q, max(min_q_block, block_elems // width))
  q_block = _largest_divisor_at_most(num_q, limit)
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

  def heads_major(x):  # [..., N, H, d] -> [B*H, N, d]
    x = jnp.moveaxis(x, -2, -3)
    return x.reshape((num_bh,) + x.shape[-2:])

  q, k, v = heads_major(query), heads_major(key), heads_major(value)
  width = num_k
  if knn is not None:
    layout = _row_layout(num_k)
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
      thresh = _kth_largest_rows(rows, knn, num_k, layout).reshape(logits.shape[:-1] + (1,))
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
  out = out.reshape(batch + (heads, num_q, v.shape[-1]))
  return jnp.moveaxis(out, -3, -2).astype(out_dtype)


def dot_product_attention(query: Array, key: Array, value: Array, *, kind: str = "dense",
                          knn_k: KnnK = None, bias: Optional[Array] = None,
                          mask: Optional[Array] = None, dropout_rng: Optional[Array] = None,
                          dropout_rate: float = 0.0, deterministic: bool = True,
                          dtype: Optional[Dtype] = None,
                          precision: PrecisionLike = None) -> Array:
  """Scaled dot-product attention, dense or k-NN.

  Args:
    query: `[..., Nq, H, d]`.
    key: `[..., Nk, H, d]`.
    value: `[..., Nk, H, d]`.
    kind: 'dense', or 'knn' to keep only each query's `knn_k` largest logits.
    knn_k: for 'knn', an int count or a float fraction of Nk (see `resolve_knn_k`).
    bias: added to the logits; broadcastable to `[..., H, Nq, Nk]`.
    mask: boolean, broadcastable to `[..., H, Nq, Nk]`; False entries get a large
      negative logit.
    dropout_rng: PRNG key for attention-probability dropout.
    dropout_rate: dropout probability for the attention weights.
    deterministic: disables dropout.
    dtype: output dtype (default: the query's).
    precision: matmul precision.

  Returns:
    `[..., Nq, H, d]`. Logits are computed in float32 as `q.k / sqrt(d)` (+ bias,
    mask) and soft-maxed in float32; for 'knn' the entries below each row's k-th
    largest logit are set to -inf after bias and mask, before the softmax (ties at
    the threshold are kept).

  Raises:
    ValueError: for an unknown `kind`, a bad `knn_k`, or dropout without a key.
  """
  _check_kind(kind)
  num_k = key.shape[-3]
  knn = resolve_knn_k(knn_k, num_k) if kind == "knn" else None
  out_dtype = dtype or query.dtype
  use_dropout = not deterministic and dropout_rate > 0.0
  if use_dropout and dropout_rng is None:
    raise ValueError("dropout_rng is required when dropout_rate > 0 and not deterministic")
  same_layout = (query.shape[:-3] == key.shape[:-3] == value.shape[:-3]
                 and query.shape[-2] == key.shape[-2] == value.shape[-2])
  plain = same_layout and bias is None and mask is None and not use_dropout
  if plain and knn is None and _flash_eligible(query, key):
    try:
      return flash_dense_attention(query, key, value).astype(out_dtype)
    except (ValueError, NotImplementedError, RuntimeError):
      pass  # cuDNN rejected this shape or version: use the XLA path below
  if _on_cpu() and plain:
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


def factorized_dot_product_attention(query: Array, key: Array, value: Array, *,
                                     kind: str = "dense", knn_k: KnnK = None,
                                     dropout_rng: Optional[Array] = None,
                                     dropout_rate: float = 0.0, deterministic: bool = True,
                                     dtype: Optional[Dtype] = None,
                                     precision: PrecisionLike = None) -> Array:
  """ViViT model 4: half the heads attend along time, the other half along space.

  Inputs are `[B, T, S, H, d]`. Heads `[0, H/2)` attend, for each spatial position,
  over the T tokens of that position; heads `[H/2, H)` attend, for each frame, over
  its S tokens. The two halves are concatenated back along the head axis. For
  kind='knn', `knn_k` is resolved separately against T and against S.

  Raises:
    ValueError: if the inputs are not 5-D or the head count H (`num_heads`) is odd.
  """
  _check_kind(kind)
  for name, x in (("query", query), ("key", key), ("value", value)):
    if x.ndim != 5:
      raise ValueError(f"factorized attention expects {name} shaped [B, T, S, H, d], "
                       f"got {x.shape}")
  heads = query.shape[-2]
  if heads % 2:
    raise ValueError(f"factorized attention needs an even num_heads, got {heads}")
  half = heads // 2
  time_rng = space_rng = None
  if dropout_rng is not None:
    time_rng, space_rng = jax.random.split(dropout_rng)
  common = dict(kind=kind, knn_k=knn_k, dropout_rate=dropout_rate,
                deterministic=deterministic, dtype=dtype, precision=precision)

  def swap(x):  # [B, T, S, ...] <-> [B, S, T, ...]
    return jnp.swapaxes(x, 1, 2)

  over_time = dot_product_attention(swap(query[..., :half, :]), swap(key[..., :half, :]),
                                    swap(value[..., :half, :]), dropout_rng=time_rng, **common)
  over_space = dot_product_attention(query[..., half:, :], key[..., half:, :],
                                     value[..., half:, :], dropout_rng=space_rng, **common)
  return jnp.concatenate([swap(over_time), over_space], axis=-2)


QkvTransform = Callable[[Array, Array, Array], Tuple[Array, Array, Array]]


class MultiHeadAttention(nn.Module):
  """Multi-head dense / k-NN attention with scenic-compatible parameter names.

  The projections are `nn.DenseGeneral` modules named `query`, `key`, `value`
  (kernels `[D, H, D/H]`) and `out` (kernel `[H, D/H, out_features]`), the layout of
  flax's / scenic's `MultiHeadDotProductAttention`, so checkpoints map one to one.

  Attributes:
    num_heads: number of heads; must divide `qkv_features`.
    qkv_features: total query/key/value width (default: the input width).
    out_features: output width (default: the input width).
    kind: 'dense' or 'knn'.
    knn_k: for 'knn', an int count or a float fraction of the keys.
    factorized: ViViT model 4 (`factorized_dot_product_attention`); the inputs are
      then `[B, T, S, D]` and no bias or mask is accepted.
    dropout_rate: dropout on the attention weights (rng stream 'dropout').
    dtype: computation dtype of the projections and of the output.
    param_dtype: parameter dtype.
    kernel_init: kernel initializer of all four projections.
    bias_init: bias initializer of all four projections.
    use_bias: whether the projections have biases.
    precision: matmul precision of projections and attention.
    qkv_transform: optional hook `(q, k, v) -> (q, k, v)` applied to the projected
      `[..., N, H, D/H]` tensors before attention (e.g. rotary embeddings or token
      shifts in later models).
  """

  num_heads: int
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  kind: str = "dense"
  knn_k: KnnK = None
  factorized: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Array] = nn.initializers.xavier_uniform()
  bias_init: Callable[..., Array] = nn.initializers.zeros
  use_bias: bool = True
  precision: PrecisionLike = None
  qkv_transform: Optional[QkvTransform] = None

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array] = None, *,
               bias: Optional[Array] = None, mask: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """Attends from `inputs_q` `[..., Nq, D]` to `inputs_kv` (default: `inputs_q`).

    With `factorized=True` the inputs are `[B, T, S, D]`. Returns `[..., Nq,
    out_features]` in `dtype`.
    """
    _check_kind(self.kind)
    if inputs_kv is None:
      inputs_kv = inputs_q
    features = self.qkv_features or inputs_q.shape[-1]
    if self.num_heads < 1 or features % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must be positive and divide "
                       f"qkv_features={features}")
    if self.factorized and (bias is not None or mask is not None):
      raise ValueError("factorized attention takes no bias or mask")
    head_dim = features // self.num_heads
    project = functools.partial(
        nn.DenseGeneral, features=(self.num_heads, head_dim), axis=-1, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        bias_init=self.bias_init, use_bias=self.use_bias, precision=self.precision)
    query = project(name="query")(inputs_q)
    key = project(name="key")(inputs_kv)
    value = project(name="value")(inputs_kv)
    if self.qkv_transform is not None:
      query, key, value = self.qkv_transform(query, key, value)

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    common = dict(kind=self.kind, knn_k=self.knn_k, dropout_rng=dropout_rng,
                  dropout_rate=self.dropout_rate, deterministic=deterministic,
                  dtype=self.dtype, precision=self.precision)
    if self.factorized:
      out = factorized_dot_product_attention(query, key, value, **common)
    else:
      out = dot_product_attention(query, key, value, bias=bias, mask=mask, **common)
    return nn.DenseGeneral(
        features=self.out_features or inputs_q.shape[-1], axis=(-2, -1), dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        bias_init=self.bias_init, use_bias=self.use_bias, precision=self.precision,
        name="out")(out)
