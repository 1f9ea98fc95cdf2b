"""X-ViT: per-frame ViT tokens with space-time mixing attention and a temporal-attention head.

Each frame is a separate token sequence `[CLS_t, N patches]` with the image
ViT's position embedding, plus a learned `time_embed` on all of its tokens
(zeros at init as in the X-ViT code; `time_embed_init_std > 0` draws it from a
normal of that scale instead). Every block is a `SpaceTimeMixingBlock`: keys/values channels
`[0, C/div)` come from frame t+1 and `[C/div, 2C/div)` from frame t-1 (zero
padded), queries are unshifted, and attention stays within the frame, so the
cost is that of a spatial-only ViT on T frames (linear in T). `div` is 8 for
Kinetics, 4 for SSv2. `segment_frames > 0` keeps the shift inside consecutive
segments of that many frames: the authors' 16-frame Kinetics model shifts
within two segments of 8 (their `XVIT.NUM_SEGMENTS: 8` with `NUM_FRAMES: 16`).
Optional summary tokens add a global view (see `spacetime_attention`).

Head (X-ViT's temporal attention aggregation): the T normalised per-frame CLS
tokens, preceded by a new zero-initialised CLS (`cls_TemporalTransformer`), go
through `head_layers` transformer blocks (no position embedding) and a
LayerNorm (`TemporalTransformer`), then an MLP head: `pre_logits` (Dense+GELU)
and the zero-initialised `output_projection`.

Every MLP, the head's blocks and the head's `pre_logits` GELU included, uses
`mlp_activation`, by default the erf GELU of the X-ViT code (PyTorch's
`nn.GELU()` in its blocks' `Mlp` and in `VitHead.mlp_head`).

`attention_type='space_only'` is the baseline without shift and without the
time embedding: frames never exchange information and the head is
permutation-invariant, so frame order is invisible.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.encoder import DENSE, AttentionSpec, EncoderBlock, exact_gelu
from vivit_knn.models.spacetime_attention import (SpaceTimeMixingBlock, frame_tokens,
                                                  time_embed_init)
from vivit_knn.models.video_transformer import VideoTransformer
from vivit_knn.models.vivit import tubelet_embedding

Dtype = Any
Activation = Callable[[jax.Array], jax.Array]

ATTENTION_TYPES = ("space_time_mixing", "space_only")


def _remat(cls, remat: bool):
  return nn.remat(cls, static_argnums=(2,)) if remat else cls


class XViTEncoder(nn.Module):
  """Per-frame tokens through mixing blocks; returns normalised `[B, T, 1 + N, D]`."""

  num_layers: int
  mlp_dim: int
  num_heads: int
  shift_div: int = 8
  num_summary_tokens: int = 0
  segment_frames: int = 0
  attention: AttentionSpec = DENSE
  time_embed_init_std: float = 0.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  mlp_activation: Activation = exact_gelu

  @nn.compact
  def __call__(self, patches: jax.Array, cls: jax.Array, *, train: bool) -> jax.Array:
    """Encodes `[B, T, N, D]` patch tokens with the `[1, 1, D]` CLS copied into each frame."""
    _, t, _, d = patches.shape
    x = frame_tokens(cls, patches)
    if self.shift_div:
      time = self.param("time_embed", time_embed_init(self.time_embed_init_std), (1, t, d),
                        jnp.float32)
      x = x + time.astype(x.dtype)[:, :, None]
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    block = _remat(SpaceTimeMixingBlock, self.remat)
    for layer in range(self.num_layers):
      x = block(mlp_dim=self.mlp_dim, num_heads=self.num_heads, shift_div=self.shift_div,
                num_summary_tokens=self.num_summary_tokens,
                segment_frames=self.segment_frames, attention=self.attention,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                droppath_rate=self.stochastic_depth * layer / max(self.num_layers - 1, 1),
                dtype=self.dtype, mlp_activation=self.mlp_activation,
                name=f"encoderblock_{layer}")(x, not train)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class TemporalHead(nn.Module):
  """`num_layers` standard blocks over `[B, 1 + T, D]` (no position embedding) and a LayerNorm."""

  num_layers: int
  mlp_dim: int
  num_heads: int
  attention: AttentionSpec = DENSE
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  mlp_activation: Activation = exact_gelu

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Returns the normalised tokens."""
    block = _remat(EncoderBlock, self.remat)
    for layer in range(self.num_layers):
      x = block(mlp_dim=self.mlp_dim, num_heads=self.num_heads, attention=self.attention,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
                mlp_activation=self.mlp_activation,
                name=f"encoderblock_{layer}")(x, not train)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class XViT(VideoTransformer):
  """X-ViT returning `(logits, intermediates)`.

  `intermediates`: `tubelets`, `encoded` (`[B, T, 1 + N, D]` backbone tokens),
  `frame_cls` (`[B, T, D]`), `pre_logits` (`[B, D]`, the head's CLS).
  `segment_frames` (0 = the whole clip) bounds the shift to segments of that many
  frames; `mlp_activation` (erf GELU) serves every MLP and the head's GELU.
  """

  attention_type: str = "space_time_mixing"
  patch_size: Sequence[int] = (16, 16, 1)
  shift_div: int = 8
  segment_frames: int = 0
  mlp_activation: Activation = exact_gelu
  num_summary_tokens: int = 0
  head_layers: int = 1
  temporal_attention: AttentionSpec = DENSE
  time_embed_init_std: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Classifies clips `[B, T, H, W, C]`; returns `(logits [B, classes], intermediates)`."""
    if self.attention_type not in ATTENTION_TYPES:
      raise ValueError(f"model.attention_type must be one of {ATTENTION_TYPES} for X-ViT, "
                       f"got {self.attention_type!r}")
    x = tubelet_embedding(self.hidden_size, tuple(self.patch_size),
                          self.kernel_init_method, self.dtype)(x)
    out = {"tubelets": x}
    b, t, h, w, d = x.shape
    if self.segment_frames < 0 or (self.segment_frames and t % self.segment_frames):
      raise ValueError(f"model.xvit_segment_frames={self.segment_frames} must be 0 or divide "
                       f"the {t} frame tokens")
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
    tokens = XViTEncoder(
        num_layers=self.num_layers, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        shift_div=self.shift_div if self.attention_type == "space_time_mixing" else 0,
        num_summary_tokens=self.num_summary_tokens, segment_frames=self.segment_frames,
        attention=self.attention, time_embed_init_std=self.time_embed_init_std,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        stochastic_depth=self.stochastic_depth, remat=self.remat, dtype=self.dtype,
        mlp_activation=self.mlp_activation,
        name="Transformer")(x.reshape(b, t, h * w, d), cls, train=train)
    out["encoded"] = tokens
    frame_cls = tokens[:, :, 0]
    out["frame_cls"] = frame_cls

    head_cls = self.param("cls_TemporalTransformer", nn.initializers.zeros, (1, 1, d),
                          jnp.float32)
    seq = jnp.concatenate(
        [jnp.broadcast_to(head_cls.astype(frame_cls.dtype), (b, 1, d)), frame_cls], axis=1)
    seq = TemporalHead(
        num_layers=self.head_layers, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        attention=self.temporal_attention, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, remat=self.remat,
        dtype=self.dtype, mlp_activation=self.mlp_activation,
        name="TemporalTransformer")(seq, train=train)
    pooled = seq[:, 0]
    out["pre_logits"] = pooled
    y = self.mlp_activation(nn.Dense(d, dtype=self.dtype, name="pre_logits")(pooled))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                      dtype=jnp.float32, name="output_projection")(y)
    return logits, out
