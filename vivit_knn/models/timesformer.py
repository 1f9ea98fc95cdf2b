"""TimeSformer (divided / space-only / joint space-time attention) on the shared core.

The sequence is `[CLS, patches x time]` (patch-major) with a `time_embed`, except for
`space_only`, which attends per frame and averages over frames (blind to frame order). MLPs
default to the erf GELU of TimeSformer's code (flax's tanh form drifts by about 1e-3 per block
from released checkpoints). As in TimeSformer, `time_embed` and every block's `temporal_fc`
start at zero (TimeSformer's code skips block 0's): from scratch that is frame-order invariant
and a saddle with the zero classifier, hence `time_embed_init_std > 0` and
`temporal_fc_zero_init=False`.

Parameters (timm names): `embedding` (`patch_embed.proj`), `cls` (`cls_token`),
`Transformer/posembed_input` (`pos_embed`), `Transformer/time_embed`,
`Transformer/encoderblock_i` (`blocks.i`), `Transformer/encoder_norm` (`norm`),
`output_projection` (`head`, zero-initialised).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vivit_knn.models.attention import DENSE, AttentionSpec
from vivit_knn.models.encoder import EncoderBlock, exact_gelu
from vivit_knn.models.family import (KeyCounts, ModelFamily, attention_spec,
                                     check_spacetime_keys, video_transformer_kwargs)
from vivit_knn.models.init_rules import InitRules
from vivit_knn.models.spacetime_attention import (DividedSpaceTimeBlock, frame_tokens,
                                                  time_embedding)
from vivit_knn.models.video_transformer import (Activation, StackFields, VideoTransformer,
                                                maybe_remat)
from vivit_knn.models.vivit import tubelet_embedding

ATTENTION_TYPES = ("divided_space_time", "space_only", "joint_space_time")
DEFAULT_ATTENTION_TYPE = "divided_space_time"  # `model.attention_type` when empty


class TimeSformerEncoder(StackFields):
  """Position/time embeddings, `num_layers` blocks and the final LayerNorm."""

  attention_type: str = DEFAULT_ATTENTION_TYPE
  temporal_attention: AttentionSpec = DENSE
  time_embed_init_std: float = 0.0
  temporal_fc_zero_init: bool = True

  def _block(self, layer: int, num_frames: int) -> nn.Module:
    if self.attention_type != "divided_space_time":
      return maybe_remat(EncoderBlock, self.remat)(**self.block_fields(layer))
    return maybe_remat(DividedSpaceTimeBlock, self.remat)(
        num_frames=num_frames, temporal_attention=self.temporal_attention,
        temporal_fc_zero_init=self.temporal_fc_zero_init, **self.block_fields(layer))

  @nn.compact
  def __call__(self, patches: jax.Array, cls: jax.Array, *, train: bool) -> jax.Array:
    """`[B, T, N, D]` patches, `[1, 1, D]` CLS -> `[B, 1 + N*T, D]` (space_only `[B, 1 + N, D]`)."""
    b, t, n, d = patches.shape
    x = frame_tokens(cls, patches)  # [B, T, 1 + N, D]
    if self.attention_type != "space_only":
      time = time_embedding(self, self.time_embed_init_std, t, d)
      grid = x[:, :, 1:] + time.astype(x.dtype)[:, :, None]
      # The CLS (with its position embedding) is the same in every frame.
      x = jnp.concatenate([x[:, 0, :1], jnp.swapaxes(grid, 1, 2).reshape(b, n * t, d)], 1)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    for layer in range(self.num_layers):
      x = self._block(layer, t)(x, not train)
    if self.attention_type == "space_only":
      x = jnp.mean(x, axis=1)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class TimeSformer(VideoTransformer):
  """TimeSformer returning `(logits, intermediates)`: `tubelets`, `encoded`, `pre_logits`."""

  attention_type: str = DEFAULT_ATTENTION_TYPE
  patch_size: Sequence[int] = (16, 16, 1)
  temporal_attention: AttentionSpec = DENSE
  time_embed_init_std: float = 0.0
  temporal_fc_zero_init: bool = True
  mlp_activation: Activation = exact_gelu

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Classifies clips `[B, T, H, W, C]`; returns `(logits [B, classes], intermediates)`."""
    x = tubelet_embedding(self)(x)
    out = {"tubelets": x}
    b, t, h, w, d = x.shape
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
    tokens = TimeSformerEncoder(
        attention_type=self.attention_type, temporal_attention=self.temporal_attention,
        time_embed_init_std=self.time_embed_init_std,
        temporal_fc_zero_init=self.temporal_fc_zero_init, name="Transformer",
        **self.stack_fields())(x.reshape(b, t, h * w, d), cls, train=train)
    out["encoded"], out["pre_logits"] = tokens, tokens[:, 0]
    return self.classify(tokens[:, 0]), out


def _build(cfg: ml_collections.ConfigDict, num_classes: int) -> TimeSformer:
  return TimeSformer(
      attention_type=cfg.attention_type or DEFAULT_ATTENTION_TYPE,
      temporal_attention=attention_spec(cfg.temporal_attention),
      time_embed_init_std=cfg.time_embed_init_std,
      temporal_fc_zero_init=cfg.temporal_fc_zero_init,
      **video_transformer_kwargs(cfg, num_classes, FAMILY.mlp_activation))


def _key_counts(cfg: ml_collections.ConfigDict, t: int, s: int) -> KeyCounts:
  """Keys per attention for `t` frames of `s` patches plus the CLS."""
  spec = attention_spec(cfg.attention)
  layout = cfg.attention_type or DEFAULT_ATTENTION_TYPE
  if layout == "joint_space_time":
    return {"model.attention": (1 + t * s, spec)}
  counts = {"model.attention": (1 + s, spec)}
  if layout == "divided_space_time":
    counts["model.temporal_attention"] = (t, attention_spec(cfg.temporal_attention))
  return counts


# The time attention starts as the spatial one; `temporal_fc` and `time_embed` at zero.
INIT_RULES = InitRules(
    from_spatial=(("temporal_norm1", "LayerNorm_0"),
                  ("temporal_attn", "MultiHeadDotProductAttention_0")),
    zeroed_block_modules=("temporal_fc",), time_embedding="time_embed")

FAMILY = ModelFamily(
    name="timesformer", build=_build, defaults=lambda: {"temporal_fc_zero_init": True},
    check=lambda cfg, shape, field: check_spacetime_keys(cfg, field, ATTENTION_TYPES,
                                                         DEFAULT_ATTENTION_TYPE),
    key_counts=_key_counts,
    mlp_activation="gelu_exact",  # TimeSformer's PyTorch `nn.GELU()`
    stem_names=frozenset({"embedding", "cls", "posembed_input", "time_embed"}),
    init_rules=INIT_RULES)
