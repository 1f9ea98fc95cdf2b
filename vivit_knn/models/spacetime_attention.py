"""Space-time attention blocks built on the one attention module: TimeSformer and X-ViT.

`DividedSpaceTimeBlock` is TimeSformer's divided block on tokens ordered
`[CLS, patches x time]` (patch-major, as TimeSformer):

  1. temporal attention over the T frames of each patch (CLS excluded), its
     output through `temporal_fc` (zero-initialised by default, so the branch
     starts as the identity) and added to the patch tokens;
  2. spatial attention within each frame over `[CLS copy, N patches]`; the
     patches take their own frame's residual, the CLS the mean over frames of
     its T residuals;
  3. the MLP.

Names: the spatial half and the MLP use the image-ViT names (`LayerNorm_0`,
`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`), the temporal half
TimeSformer's (`temporal_norm1`, `temporal_attn`, `temporal_fc`), so an image ViT
loads without renaming and a timm-style TimeSformer checkpoint maps with the
same table as a timm ViT (`norm1`, `attn`, `norm2`, `mlp`) plus identical names.

`SpaceTimeMixingBlock` is X-ViT's block on per-frame tokens `[B, T, S, D]` (each
frame with its own CLS). After the projections, `FrameShift` replaces the key
and value channels `[0, C/div)` by those of frame t+1 and `[C/div, 2C/div)` by
those of frame t-1 (zeros past either end); queries are not shifted. Attention
then runs within each frame, so the cost is that of spatial-only attention:
linear in T. With `segment_frames` set, the clip is cut into consecutive
segments of that many frames and the shift stays inside each: the first and
last frame of every segment see zeros where a neighbour in another segment
would be (the authors' 16-frame Kinetics X-ViT shifts within two 8-frame
segments: its `TemporalShift` views the `B*16` frames as `[2B, 8]`).

MLP activation: both blocks take `mlp_activation` (default: the erf GELU of
PyTorch's `nn.GELU()`, which the TimeSformer and X-ViT code use).

Summary tokens (X-ViT's optional global temporal mixing; no public code has
them, so this is our reading of the paper): in every block each frame's tokens
are pooled into R summary tokens, `z_t = softmax(P LN(x_t)^T / sqrt(D)) LN(x_t)`
with learned probes `P` `[R, D]` (zero-initialised, so at init each summary is
the frame's mean token). The T*R summaries of the whole clip are appended to
every frame's keys and values (projected by the same key/value layers, not
shifted), so every query can also attend to a summary of every frame. This adds
`T*R` keys per query: cost `O(T S (S + T R))`, negligible while `T R << S`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.attention import DENSE, AttentionSpec
from vivit_knn.models.encoder import (AddPositionEmbedding, attention_module, drop_path,
                                      exact_gelu, mlp_residual)
from vivit_knn.models.video_transformer import BlockFields

Dtype = Any
Activation = Callable[[jax.Array], jax.Array]


def shift_frames(x: jax.Array, div: int, segment_frames: int = 0) -> jax.Array:
  """X-ViT's channel shift of `[..., T, N, H, d]` along T (axis -4).

  Channels are the flattened `H*d` axis (head-major). Output channels `[0, C/div)`
  hold frame t+1's, `[C/div, 2C/div)` frame t-1's, the rest frame t's own; frames
  past either end contribute zeros. With `segment_frames > 0` the T frames are
  consecutive segments of that many frames and "either end" is the segment's:
  no channel crosses a segment border.
  """
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
  """`qkv_transform` hook: shifts keys and values along frames, leaves queries alone.

  Inputs are `[B, T, N, H, d]`. With `own_tokens` set, only the first `own_tokens`
  keys/values (the frame's own tokens) are shifted; later ones (summary tokens)
  are left as they are. `segment_frames > 0` keeps the shift inside consecutive
  segments of that many frames (see `shift_frames`).
  """

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
  """Pools each frame's tokens `[B, T, S, D]` into `num_tokens` summaries `[B, T, R, D]`.

  Attention pooling with learned probes (`probes`, zeros at init = mean pooling).
  """

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
  """TimeSformer's divided space-time block on `[B, 1 + N*T, D]` tokens (see module doc).

  `temporal_fc_zero_init=False` initialises `temporal_fc` like any Dense layer
  (for training from scratch, where there is no image model to start from).
  `mlp_activation` defaults to TimeSformer's erf GELU. `attention` is the spatial
  attention's, `temporal_attention` the time attention's.
  """

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
    fc_init = nn.initializers.zeros if self.temporal_fc_zero_init else nn.initializers.lecun_normal()
    y = nn.Dense(d, dtype=self.dtype, kernel_init=fc_init, name="temporal_fc")(self._branch(y, deterministic))
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
  """X-ViT block on per-frame tokens `[B, T, S, D]` (see module doc).

  `shift_div=0` turns the shift off (the space-only baseline); `segment_frames > 0`
  keeps the shift inside consecutive segments of that many frames.
  `mlp_activation` defaults to X-ViT's erf GELU.
  """

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


def time_embed_init(std: float):
  """`time_embed` initializer: zeros (TimeSformer, X-ViT) or, for `std > 0`, normal(std)."""
  return nn.initializers.normal(stddev=std) if std > 0 else nn.initializers.zeros


def frame_tokens(cls: jax.Array, patches: jax.Array) -> jax.Array:
  """`[CLS, patches]` per frame plus a learned per-frame position embedding.

  `patches` is `[B, T, N, D]`, `cls` `[1, 1, D]`; returns `[B, T, 1 + N, D]`. The
  embedding (`posembed_input/pos_embedding`, `[1, 1 + N, D]`, the image ViT's)
  is created on the calling module, so call this from a compact method.
  """
  b, t, n, d = patches.shape
  cls = jnp.broadcast_to(cls.astype(patches.dtype), (b * t, 1, d))
  tokens = jnp.concatenate([cls, patches.reshape(b * t, n, d)], axis=1)
  tokens = AddPositionEmbedding(name="posembed_input")(tokens)
  return tokens.reshape(b, t, 1 + n, d)

