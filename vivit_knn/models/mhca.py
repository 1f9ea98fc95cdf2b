"""MHCA: multi-head attention with a learnable quadratic relative-position term per head.

Head h adds `v_h . r_delta` to its logits, `delta = p_k - p_q = (dx, dy)` the key
patch's offset from the query patch, `r_delta = (|delta|^2, dx, dy)`, `v_h =
-alpha_h (1, -2 Delta_h1, -2 Delta_h2)`: with Q = K = 0 a Gaussian kernel centred on
`Delta_h`, sharper as `alpha_h` grows (Cordonnier et al.; ConViT). `Delta_h` starts
on a grid around 0 (the taps of a local convolution). Prefix tokens (CLS) get no
term; video tokens use their spatial coordinates, so all frames share the term. It
enters as the attention's `bias`, so dense and k-NN attention both work.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vivit_knn.models.attention import DENSE, AttentionSpec, MultiHeadAttention

Dtype = Any


def local_offsets(num_heads: int) -> np.ndarray:
  """Initial `Delta_h` `[H, 2]`: a rows x cols grid centred on 0 (rows <= cols, rows * cols = H).

  6 heads give rows {-0.5, 0.5} x cols {-1, 0, 1}; 9 heads the 3x3 taps around 0.
  """
  rows = max(r for r in range(1, int(math.isqrt(num_heads)) + 1) if num_heads % r == 0)
  cols = num_heads // rows
  dy, dx = np.meshgrid(np.arange(rows) - (rows - 1) / 2, np.arange(cols) - (cols - 1) / 2,
                       indexing="ij")
  return np.stack([dx.ravel(), dy.ravel()], axis=-1).astype(np.float32)


def patch_positions(grid: Sequence[int], num_frames: int = 1) -> np.ndarray:
  """`(x, y)` = (column, row) of every patch `[num_frames * h * w, 2]`, frames outermost."""
  h, w = grid
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  frame = np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)
  return np.tile(frame, (num_frames, 1))


def quadratic_position_bias(delta: jax.Array, alpha: jax.Array, positions: jax.Array,
                            num_prefix: int = 0) -> jax.Array:
  """The term `[H, P + N, P + N]` of `N` patch `positions` `[N, 2]`, 0 for the P prefix tokens.

  Entry `[h, q, k]` is `-alpha_h (|d|^2 - 2 Delta_h . d)` with `d = pos_k - pos_q`.
  """
  positions = jnp.asarray(positions, jnp.float32)
  d = positions[None, :, :] - positions[:, None, :]  # [Nq, Nk, 2], key minus query
  sq = jnp.sum(d * d, axis=-1)
  delta = jnp.asarray(delta, jnp.float32)
  alpha = jnp.asarray(alpha, jnp.float32)
  cross = jnp.einsum("qkc,hc->hqk", d, delta)
  bias = -alpha[:, None, None] * (sq[None] - 2.0 * cross)
  if num_prefix:
    bias = jnp.pad(bias, ((0, 0), (num_prefix, 0), (num_prefix, 0)))
  return bias


class QuadraticPositionBias(nn.Module):
  """Learnable per-head `Delta_h` (`delta`, `[H, 2]`) and `alpha_h` (`alpha`, `[H]`)."""

  num_heads: int
  locality_strength: float = 1.0

  @nn.compact
  def __call__(self, grid: Sequence[int], num_frames: int = 1, num_prefix: int = 0) -> jax.Array:
    """The bias `[H, P + T*h*w, P + T*h*w]` for a `grid` `(h, w)` repeated over `num_frames`."""
    offsets = local_offsets(self.num_heads)
    delta = self.param("delta", lambda *_: jnp.asarray(offsets), offsets.shape)
    alpha = self.param("alpha", nn.initializers.constant(self.locality_strength),
                       (self.num_heads,), jnp.float32)
    return quadratic_position_bias(delta, alpha, patch_positions(grid, num_frames), num_prefix)


def mhca_attention(x: jax.Array, *, num_heads: int, grid: Sequence[int], num_frames: int = 1,
                   num_prefix: int = 1, attention: AttentionSpec = DENSE,
                   locality_strength: float = 1.0, dropout_rate: float = 0.0,
                   deterministic: bool = True, dtype: Dtype = jnp.float32) -> jax.Array:
  """MHCA of tokens `[B, P + T*h*w, D]`, built in the calling module's compact method.

  `RelativePosition_0` is the bias of `MultiHeadDotProductAttention_0` (the plain ViT's name).
  """
  bias = QuadraticPositionBias(num_heads, locality_strength, name="RelativePosition_0")(
      grid, num_frames, num_prefix)
  return MultiHeadAttention(num_heads=num_heads, attention=attention,
                            dropout_rate=dropout_rate, dtype=dtype,
                            name="MultiHeadDotProductAttention_0")(
                                x, bias=bias, deterministic=deterministic)

