"""TimeSformer (divided / space-only / joint space-time attention) on the shared core.

Each frame's patches get the image ViT's position embedding (with the CLS), then,
except for `space_only`, a `time_embed` on the patches; the sequence is `[CLS,
patches x time]` (patch-major). Layouts: `divided_space_time`
(`DividedSpaceTimeBlock`), `joint_space_time` (standard blocks over all `1 + N*T`
tokens), `space_only` (standard blocks per frame, tokens averaged over frames;
blind to frame order). `attention` is the spatial/joint attention,
`temporal_attention` the divided time attention. MLPs default to the erf GELU of
TimeSformer's code (flax's tanh form drifts by about 1e-3 per block from released
checkpoints).

As in TimeSformer, which starts from image weights, `time_embed` and every block's
`temporal_fc` start at zero (the image model on each frame; TimeSformer's code
skips block 0's). From scratch that is frame-order invariant and a saddle with the
zero classifier (chance for hundreds of steps on synthetic motion), hence
`time_embed_init_std > 0` and `temporal_fc_zero_init=False`.

Parameters (timm names): `embedding` (`patch_embed.proj`), `cls` (`cls_token`),
`Transformer/posembed_input` (`pos_embed`), `Transformer/time_embed`,
`Transformer/encoderblock_i` (`blocks.i`), `Transformer/encoder_norm` (`norm`),
`output_projection` (`head`, zero-initialised). `FAMILY` is the 'timesformer'
family (own key: `temporal_fc_zero_init`).
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
                                                  time_embed_init)
from vivit_knn.models.video_transformer import (Activation, StackFields, VideoTransformer,
                                                maybe_remat)
from vivit_knn.models.vivit import tubelet_embedding

ATTENTION_TYPES = ("divided_space_time", "space_only", "joint_space_time")
DEFAULT_ATTENTION_TYPE = "divided_space_time"  # `model.attention_type` when empty


class TimeSformerEncoder(StackFields):
  """Position/time embeddings, `num_layers` blocks and the final LayerNorm.

  Takes patch tokens `[B, T, N, D]` and the `[1, 1, D]` CLS; returns `[B, 1 + N*T, D]`
  (`[B, 1 + N, D]`, averaged over frames, for `space_only`).
  """

  attention_type: str = DEFAULT_ATTENTION_TYPE
  temporal_attention: AttentionSpec = DENSE
  time_embed_init_std: float = 0.0
  temporal_fc_zero_init: bool = True

  def _block(self, layer: int, num_frames: int) -> nn.Module:
    common = self.block_fields(layer)
    if self.attention_type == "divided_space_time":
      cls = DividedSpaceTimeBlock
      common.update(num_frames=num_frames, temporal_attention=self.temporal_attention,
                    temporal_fc_zero_init=self.temporal_fc_zero_init)
    else:
      cls = EncoderBlock
    return maybe_remat(cls, self.remat)(**common)

  @nn.compact
  def __call__(self, patches: jax.Array, cls: jax.Array, *, train: bool) -> jax.Array:
    """Encodes `[B, T, N, D]` patch tokens (see class doc)."""
    b, t, n, d = patches.shape
    x = frame_tokens(cls, patches)  # [B, T, 1 + N, D]
    if self.attention_type != "space_only":
      time = self.param("time_embed", time_embed_init(self.time_embed_init_std), (1, t, d),
                        jnp.float32)
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
  """TimeSformer returning `(logits, intermediates)`.

  `intermediates`: `tubelets` (`[B, t, h, w, D]` after the stem), `encoded` (final
  tokens) and `pre_logits` (the CLS, `[B, D]`).
  """

  attention_type: str = DEFAULT_ATTENTION_TYPE
  patch_size: Sequence[int] = (16, 16, 1)
  temporal_attention: AttentionSpec = DENSE
  time_embed_init_std: float = 0.0
  temporal_fc_zero_init: bool = True
  mlp_activation: Activation = exact_gelu

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Classifies clips `[B, T, H, W, C]`; returns `(logits [B, classes], intermediates)`."""
    x = tubelet_embedding(self.hidden_size, tuple(self.patch_size),
                          self.kernel_init_method, self.dtype)(x)
    out = {"tubelets": x}
    b, t, h, w, d = x.shape
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
    tokens = TimeSformerEncoder(
        attention_type=self.attention_type, temporal_attention=self.temporal_attention,
        time_embed_init_std=self.time_embed_init_std,
        temporal_fc_zero_init=self.temporal_fc_zero_init, name="Transformer",
        **self.stack_fields())(x.reshape(b, t, h * w, d), cls, train=train)
    out["encoded"] = tokens
    out["pre_logits"] = tokens[:, 0]
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                      dtype=jnp.float32, name="output_projection")(tokens[:, 0])
    return logits, out


# --------------------------------------------------------------------------------------
# The 'timesformer' family.


def _build(cfg: ml_collections.ConfigDict, num_classes: int) -> TimeSformer:
  """The TimeSformer that `config.model` describes."""
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
