"""TimeSformer (divided / space-only / joint space-time attention) on the shared core.

Tokens: each frame's patches get the image ViT's per-frame position embedding
(with the CLS), then, except for `space_only`, a `time_embed` on the patches
only. The sequence is `[CLS, patches x time]` (patch-major, as TimeSformer).

`time_embed` starts as normal(0.02) noise, like every learned position
embedding here. TimeSformer starts it at zero, but it always starts from image
weights; from scratch a zero time embedding leaves the divided and joint models
exactly invariant to frame order, a saddle that training only leaves slowly.
Initialising from an image ViT (`vivit_knn.weights.init_from`) sets it to zero.

* `divided_space_time`: `DividedSpaceTimeBlock` (time attention per patch, then
  space attention per frame with the CLS averaged over frames, then the MLP).
* `joint_space_time`: standard blocks over all `1 + N*T` tokens.
* `space_only`: standard blocks on each frame's `[CLS, N patches]`, then the
  tokens are averaged over frames. Frame order is invisible to it.

Every attention is dense or k-NN through `AttentionSpec`: `attention` for the
spatial/joint attention, `temporal_attention` for the divided time attention.

Parameters (the timm TimeSformer names they map to in brackets): `embedding`
(`patch_embed.proj`), `cls` (`cls_token`), `Transformer/posembed_input`
(`pos_embed`), `Transformer/time_embed` (`time_embed`), `Transformer/encoderblock_i`
(`blocks.i`, see `spacetime_attention`), `Transformer/encoder_norm` (`norm`),
`output_projection` (`head`, zero-initialised). TimeSformer leaves block 0's
`temporal_fc` randomly initialised; here every `temporal_fc` starts at zero so
each temporal branch starts as the identity.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.encoder import DENSE, AttentionSpec, EncoderBlock
from vivit_knn.models.spacetime_attention import DividedSpaceTimeBlock, frame_tokens
from vivit_knn.models.vivit import tubelet_embedding

Dtype = Any

ATTENTION_TYPES = ("divided_space_time", "space_only", "joint_space_time")


class TimeSformerEncoder(nn.Module):
  """Position/time embeddings, `num_layers` blocks and the final LayerNorm.

  Takes patch tokens `[B, T, N, D]` and the `[1, 1, D]` CLS; returns `[B, 1 + N*T, D]`
  (`[B, 1 + N, D]`, averaged over frames, for `space_only`).
  """

  attention_type: str
  num_layers: int
  mlp_dim: int
  num_heads: int
  attention: AttentionSpec = DENSE
  temporal_attention: AttentionSpec = DENSE
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32

  def _block(self, layer: int, num_frames: int) -> nn.Module:
    common = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, attention=self.attention,
                  dropout_rate=self.dropout_rate,
                  attention_dropout_rate=self.attention_dropout_rate,
                  droppath_rate=self.stochastic_depth * layer / max(self.num_layers - 1, 1),
                  dtype=self.dtype, name=f"encoderblock_{layer}")
    if self.attention_type == "divided_space_time":
      cls = DividedSpaceTimeBlock
      common.update(num_frames=num_frames, temporal_attention=self.temporal_attention)
    else:
      cls = EncoderBlock
    if self.remat:
      cls = nn.remat(cls, static_argnums=(2,))  # `deterministic` stays a Python bool
    return cls(**common)

  @nn.compact
  def __call__(self, patches: jax.Array, cls: jax.Array, *, train: bool) -> jax.Array:
    """Encodes `[B, T, N, D]` patch tokens (see class doc)."""
    if self.attention_type not in ATTENTION_TYPES:
      raise ValueError(f"model.attention_type must be one of {ATTENTION_TYPES} for "
                       f"TimeSformer, got {self.attention_type!r}")
    b, t, n, d = patches.shape
    x = frame_tokens(cls, patches)  # [B, T, 1 + N, D]
    if self.attention_type != "space_only":
      time = self.param("time_embed", nn.initializers.normal(stddev=float(__import__("os").environ.get("EXP_TIME", "0.02"))), (1, t, d), jnp.float32)
      grid = x[:, :, 1:] + time.astype(x.dtype)[:, :, None]
      # The CLS (with its position embedding) is the same in every frame.
      x = jnp.concatenate([x[:, 0, :1], jnp.swapaxes(grid, 1, 2).reshape(b, n * t, d)], 1)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    for layer in range(self.num_layers):
      x = self._block(layer, t)(x, not train)
    if self.attention_type == "space_only":
      x = jnp.mean(x, axis=1)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class TimeSformer(nn.Module):
  """TimeSformer returning `(logits, intermediates)`.

  `intermediates`: `tubelets` (`[B, t, h, w, D]` after the stem), `encoded` (final
  tokens) and `pre_logits` (the CLS, `[B, D]`).
  """

  num_classes: int
  attention_type: str = "divided_space_time"
  hidden_size: int = 768
  patch_size: Sequence[int] = (16, 16, 1)
  num_heads: int = 12
  mlp_dim: int = 3072
  num_layers: int = 12
  attention: AttentionSpec = DENSE
  temporal_attention: AttentionSpec = DENSE
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  kernel_init_method: Optional[str] = None
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Classifies clips `[B, T, H, W, C]`; returns `(logits [B, classes], intermediates)`."""
    x = tubelet_embedding(self.hidden_size, tuple(self.patch_size),
                          self.kernel_init_method, self.dtype)(x)
    out = {"tubelets": x}
    b, t, h, w, d = x.shape
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
    tokens = TimeSformerEncoder(
        attention_type=self.attention_type, num_layers=self.num_layers,
        mlp_dim=self.mlp_dim, num_heads=self.num_heads, attention=self.attention,
        temporal_attention=self.temporal_attention, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        stochastic_depth=self.stochastic_depth, remat=self.remat, dtype=self.dtype,
        name="Transformer")(x.reshape(b, t, h * w, d), cls, train=train)
    out["encoded"] = tokens
    out["pre_logits"] = tokens[:, 0]
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                      dtype=jnp.float32, name="output_projection")(tokens[:, 0])
    return logits, out
