"""Exact k-th largest value along the last axis, without sorting (radix select on float bits).

Floats map to int32 keys of the same order; the threshold is built bit by bit from
the top, keeping a bit while at least k entries are >= the candidate. Each of the
four phases reduces every entry to one byte relative to the prefix found so far
(0 below, 255 above), so its eight counting passes run on uint8.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vivit_knn.models import cpu_paths

Array = jax.Array

# Rows are padded to groups of 32 bytes (one 256-bit vector), at most 7 groups per segment
# so that a segment's count (<= 224) fits the uint8 accumulator.
_LANES = 32
_MAX_GROUPS_PER_SEGMENT = 7

# On CPU, rows are searched in chunks of about this many float32 elements (2 MiB).
_SEARCH_ELEMS = 1 << 19


@dataclasses.dataclass(frozen=True)
class RowLayout:
  """How a row of n entries is padded and split for the uint8 counting passes."""

  padded: int    # row length after padding, = segments * groups * _LANES
  segments: int  # independent uint8 counts per row
  groups: int    # _LANES-wide groups summed lane-wise inside a segment


@functools.lru_cache(maxsize=None)
def row_layout(n: int) -> RowLayout:
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
      best = (cost, RowLayout(total_groups * _LANES, segments, groups))
  return best[1]


def sortable_key(x: Array) -> Array:
  """float32 -> int32 whose signed order is the float order (-0.0 just below +0.0)."""
  bits = lax.bitcast_convert_type(x, jnp.int32)
  # Negative floats order backwards: flip their magnitude bits, keep the sign bit.
  return bits ^ ((bits >> 31) & jnp.int32(0x7FFFFFFF))


def key_to_float(key: Array) -> Array:
  """Inverse of `sortable_key` (the same xor undoes itself)."""
  return lax.bitcast_convert_type(key ^ ((key >> 31) & jnp.int32(0x7FFFFFFF)), jnp.float32)


def _count_at_least(digits: Array, cand: Array, layout: RowLayout) -> Array:
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


def kth_largest_rows(x: Array, k: Union[int, Array], n_valid: int,
                     layout: RowLayout) -> Array:
  """Exact k-th largest of each row of float32 `x` `[R, padded]`; columns >= n_valid are ignored."""
  rows = x.shape[0]
  key = sortable_key(x)
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
  return key_to_float(prefix)


def block_size(n: int, limit: int) -> int:
  """The largest divisor of `n` up to `limit`; `min(n, limit)` (n to be padded) if 4x smaller."""
  limit = max(1, min(n, limit))
  divisor = next(d for d in range(limit, 0, -1) if n % d == 0)
  return limit if 4 * divisor < limit else divisor


@functools.partial(jax.jit, static_argnums=2)
def _kth_largest_2d(x: Array, k: Array, chunk_elems: Optional[int]) -> Array:
  """`kth_largest` of float32 `[R, n]` for a traced int32 `k`, `chunk_elems` at a time: `[R, 1]`."""
  num_rows, n = x.shape
  layout = row_layout(n)
  if layout.padded != n:
    # -inf padding cannot change the k-th largest of n >= k entries.
    x = jnp.pad(x, ((0, 0), (0, layout.padded - n)), constant_values=-jnp.inf)
  search = functools.partial(kth_largest_rows, k=k, n_valid=layout.padded, layout=layout)
  chunk = num_rows if chunk_elems is None else max(1, chunk_elems // layout.padded)
  if num_rows <= chunk:
    return search(x)
  rows = block_size(num_rows, chunk)
  if num_rows % rows:  # no convenient divisor: pad with -inf rows instead
    total = -(-num_rows // rows) * rows
    x = jnp.pad(x, ((0, total - num_rows), (0, 0)), constant_values=-jnp.inf)
  out = lax.map(search, x.reshape(-1, rows, layout.padded))
  return out.reshape(-1, 1)[:num_rows]


def kth_largest(x: Array, k: int) -> Array:
  """Exact k-th largest value along the last axis of `x`, shape `x.shape[:-1] + (1,)`.

  Equals `np.sort(x, -1)[..., -k][..., None]` (duplicates count separately) for
  float32, bfloat16 and float16, in the input dtype: 32 counting passes over `x`, no
  sort; NaN entries give an unspecified result, the output no gradient. TypeError for
  non-float or 64-bit inputs, ValueError unless `k` is an int in `[1, n]`.
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
  chunk_elems = _SEARCH_ELEMS if cpu_paths.enabled() else None
  thresh = _kth_largest_2d(rows, jnp.int32(k), chunk_elems)
  return thresh.reshape(out_shape).astype(x.dtype)


def knn_mask_logits(logits: Array, k: int) -> Array:
  """Sets each row's entries below its k-th largest (last axis) to -inf, keeping ties."""
  return jnp.where(logits >= kth_largest(logits, k), logits, -jnp.inf)
