"""Space-time attention blocks on the one attention module: TimeSformer's and X-ViT's.

`DividedSpaceTimeBlock` (TimeSformer) on `[CLS, patches x time]` (patch-major):
time attention per patch (CLS excluded) through `temporal_fc` (zero-initialised:
the branch starts as the identity); space attention per frame over `[CLS copy, N
patches]`, the CLS taking the mean of its T residuals; the MLP. The spatial half
and the MLP keep the image ViT's names, the time half TimeSformer's
(`temporal_norm1`, `temporal_attn`, `temporal_fc`), so image and timm checkpoints map.

`SpaceTimeMixingBlock` (X-ViT) on per-frame tokens `[B, T, S, D]`: `FrameShift`
gives keys and values frame t+1's channels `[0, C/div)` and frame t-1's `[C/div,
2C/div)` (zeros past either end; within `segment_frames`-frame segments if set);
attention stays within the frame (cost linear in T). Optional summary tokens (our
reading of the paper; no public code): each frame is pooled into R tokens by learned
probes (zeros at init: the mean token), and all T*R are appended to every frame's keys
and values (unshifted), at cost `O(T S (S + T R))`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.attention import DENSE, AttentionSpec
from vivit_knn.models.encoder import (AddPositionEmbedding, attention_module, drop_path,
                                      exact_gelu, mlp_residual)
from vivit_knn.models.video_transformer import Activation, BlockFields


def shift_frames(x: jax.Array, div: int, segment_frames: int = 0) -> jax.Array:
  """X-ViT's channel shift (module doc) of `[..., T, N, H, d]` along T; channels are `H*d`."""
  *lead, t, n, h, d = x.shape
  if segment_frames and segment_frames != t:
    segments = x.reshape(tuple(lead) + (t // segment_frames, segment_frames, n, h, d))
    return shift_frames(segments, div).reshape(x.shape)
  c = h * d
  fold = c // div
  flat = x.reshape(tuple(lead) + (t, n, c))
  no_pad = [(0, 0)] * len(lead)
  from_next = jnp.pad(flat[..., 1:, :, :fold], no_pad + [(0, 1), (0, 0), (0, 0)])
  from_prev = jnp.pad(flat[..., :-1, :, fold:2 * fold], no_pad + [(1, 0), (0, 0), (0, 0)])
  mixed = jnp.concatenate([from_next, from_prev, flat[..., 2 * fold:]], axis=-1)
  return mixed.reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class FrameShift:
  """`qkv_transform` hook shifting keys and values `[B, T, N, H, d]` (the first `own_tokens`)."""

  div: int
  own_tokens: Optional[int] = None
  segment_frames: int = 0

  def _shift(self, x: jax.Array) -> jax.Array:
    if self.own_tokens is None or self.own_tokens == x.shape[-3]:
      return shift_frames(x, self.div, self.segment_frames)
    own, extra = x[..., :self.own_tokens, :, :], x[..., self.own_tokens:, :, :]
    return jnp.concatenate([shift_frames(own, self.div, self.segment_frames), extra], axis=-3)

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array
               ) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Returns `(q, shifted k, shifted v)`."""
    return q, self._shift(k), self._shift(v)


class SummaryTokens(nn.Module):
  """Attention-pools each frame's `[B, T, S, D]` into `num_tokens` summaries by learned `probes`."""

  num_tokens: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `softmax(P x^T / sqrt(D)) x` per frame (computed in `x`'s dtype)."""
    d = x.shape[-1]
    probes = self.param("probes", nn.initializers.zeros, (self.num_tokens, d), jnp.float32)
    logits = jnp.einsum("rd,btsd->btrs", probes.astype(x.dtype), x) * d ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    return jnp.einsum("btrs,btsd->btrd", weights, x)


class DividedSpaceTimeBlock(BlockFields, kw_only=True):
  """TimeSformer's divided space-time block on `[B, 1 + N*T, D]` tokens (see the module doc)."""

  num_frames: int
  temporal_attention: AttentionSpec = DENSE
  temporal_fc_zero_init: bool = True
  mlp_activation: Activation = exact_gelu

  def _branch(self, y: jax.Array, deterministic: bool) -> jax.Array:
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return drop_path(self, y, self.droppath_rate, deterministic)

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    """Time attention per patch, space attention per frame (CLS averaged), then the MLP."""
    b, length, d = x.shape
    t = self.num_frames
    n = (length - 1) // t
    cls, patches = x[:, :1], x[:, 1:].reshape(b, n, t, d)

    y = nn.LayerNorm(dtype=self.dtype, name="temporal_norm1")(patches)
    y = attention_module(self, "temporal_attn", self.temporal_attention)(
        y, deterministic=deterministic)
    fc_init = (nn.initializers.zeros if self.temporal_fc_zero_init
               else nn.initializers.lecun_normal())
    y = nn.Dense(d, dtype=self.dtype, kernel_init=fc_init,
                 name="temporal_fc")(self._branch(y, deterministic))
    patches = patches + y

    frames = jnp.swapaxes(patches, 1, 2)  # [B, T, N, D]
    tokens = jnp.concatenate([jnp.broadcast_to(cls[:, None], (b, t, 1, d)), frames], 2)
    y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(tokens)
    y = attention_module(self, "MultiHeadDotProductAttention_0")(y, deterministic=deterministic)
    y = self._branch(y, deterministic)
    cls = cls + jnp.mean(y[:, :, :1], axis=1)
    patches = patches + jnp.swapaxes(y[:, :, 1:], 1, 2)
    x = jnp.concatenate([cls, patches.reshape(b, n * t, d)], axis=1)
    return mlp_residual(self, x, deterministic)


class SpaceTimeMixingBlock(BlockFields):
  """X-ViT's block on per-frame tokens `[B, T, S, D]` (module doc); `shift_div=0`: no shift."""

  shift_div: int = 8
  num_summary_tokens: int = 0
  segment_frames: int = 0
  mlp_activation: Activation = exact_gelu

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    """Shifted-key/value attention within each frame (+ summary keys), then the MLP."""
    b, t, s, d = x.shape
    y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
    kv, own = y, None
    if self.num_summary_tokens:
      summary = SummaryTokens(self.num_summary_tokens, name="summary_tokens")(y)
      summary = summary.reshape(b, 1, t * self.num_summary_tokens, d)
      kv = jnp.concatenate([y, jnp.broadcast_to(summary, (b, t) + summary.shape[2:])], 2)
      own = s
    shift = FrameShift(self.shift_div, own, self.segment_frames) if self.shift_div else None
    y = attention_module(self, "MultiHeadDotProductAttention_0", qkv_transform=shift)(
        y, kv, deterministic=deterministic)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    x = x + drop_path(self, y, self.droppath_rate, deterministic)
    return mlp_residual(self, x, deterministic)


def time_embedding(module: nn.Module, std: float, num_frames: int, dim: int) -> jax.Array:
  """`module`'s `time_embed` `[1, T, D]`: zeros (TimeSformer, X-ViT), or normal(std) if std > 0."""
  init = nn.initializers.normal(stddev=std) if std > 0 else nn.initializers.zeros
  return module.param("time_embed", init, (1, num_frames, dim), jnp.float32)


def frame_tokens(cls: jax.Array, patches: jax.Array) -> jax.Array:
  """`[CLS, patches]` per frame `[B, T, 1 + N, D]` plus `posembed_input` (on the calling module)."""
  b, t, n, d = patches.shape
  cls = jnp.broadcast_to(cls.astype(patches.dtype), (b * t, 1, d))
  tokens = jnp.concatenate([cls, patches.reshape(b * t, n, d)], axis=1)
  tokens = AddPositionEmbedding(name="posembed_input")(tokens)
  return tokens.reshape(b, t, 1 + n, d)

