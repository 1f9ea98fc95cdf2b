"""X-ViT: per-frame ViT tokens with space-time mixing attention and a temporal-attention head.

Each frame is a token sequence `[CLS_t, N patches]` with the image ViT's position
embedding plus a learned `time_embed`. Every block is a `SpaceTimeMixingBlock` (`div` 8
for Kinetics, 4 for SSv2; the authors' 16-frame Kinetics model shifts within two 8-frame
segments: `segment_frames=8`). Head: a new zero CLS and the T per-frame CLS tokens
through `head_layers` blocks without position embedding, then `pre_logits` (Dense +
`mlp_activation`, by default the X-ViT code's erf GELU). `attention_type='space_only'`
has no shift and no time embedding, so frame order is invisible to it.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vivit_knn.models.attention import DENSE, AttentionSpec
from vivit_knn.models.encoder import EncoderBlock, exact_gelu
from vivit_knn.models.family import (KeyCounts, ModelFamily, attention_spec,
                                     check_spacetime_keys, require, video_transformer_kwargs)
from vivit_knn.models.init_rules import InitRules
from vivit_knn.models.spacetime_attention import (SpaceTimeMixingBlock, frame_tokens,
                                                  time_embedding)
from vivit_knn.models.video_transformer import (Activation, StackFields, VideoTransformer,
                                                maybe_remat)
from vivit_knn.models.vivit import tubelet_embedding

ATTENTION_TYPES = ("space_time_mixing", "space_only")
DEFAULT_ATTENTION_TYPE = "space_time_mixing"  # `model.attention_type` when empty


class XViTEncoder(StackFields):
  """Per-frame tokens through mixing blocks; returns normalised `[B, T, 1 + N, D]`."""

  shift_div: int = 8
  num_summary_tokens: int = 0
  segment_frames: int = 0
  time_embed_init_std: float = 0.0

  @nn.compact
  def __call__(self, patches: jax.Array, cls: jax.Array, *, train: bool) -> jax.Array:
    """Encodes `[B, T, N, D]` patch tokens with the `[1, 1, D]` CLS copied into each frame."""
    _, t, _, d = patches.shape
    x = frame_tokens(cls, patches)
    if self.shift_div:
      x = x + time_embedding(self, self.time_embed_init_std, t, d).astype(x.dtype)[:, :, None]
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    block = maybe_remat(SpaceTimeMixingBlock, self.remat)
    for layer in range(self.num_layers):
      x = block(shift_div=self.shift_div, num_summary_tokens=self.num_summary_tokens,
                segment_frames=self.segment_frames, **self.block_fields(layer))(x, not train)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class TemporalHead(StackFields):
  """`num_layers` standard blocks over `[B, 1 + T, D]` (no position embedding) and a LayerNorm."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Returns the normalised tokens."""
    block = maybe_remat(EncoderBlock, self.remat)
    for layer in range(self.num_layers):
      x = block(**self.block_fields(layer))(x, not train)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class XViT(VideoTransformer):
  """X-ViT returning `(logits, intermediates)`: `tubelets`, `encoded`, `frame_cls`, `pre_logits`."""

  attention_type: str = DEFAULT_ATTENTION_TYPE
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
    x = tubelet_embedding(self)(x)
    out = {"tubelets": x}
    b, t, h, w, d = x.shape
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
    tokens = XViTEncoder(
        shift_div=self.shift_div if self.attention_type == "space_time_mixing" else 0,
        num_summary_tokens=self.num_summary_tokens, segment_frames=self.segment_frames,
        time_embed_init_std=self.time_embed_init_std, name="Transformer",
        **self.stack_fields())(x.reshape(b, t, h * w, d), cls, train=train)
    out["encoded"], out["frame_cls"] = tokens, tokens[:, :, 0]
    seq = self.prepend_cls(out["frame_cls"], "cls_TemporalTransformer")
    seq = TemporalHead(**dict(self.stack_fields(), num_layers=self.head_layers,
                              attention=self.temporal_attention, stochastic_depth=0.0),
                       name="TemporalTransformer")(seq, train=train)
    out["pre_logits"] = seq[:, 0]
    y = self.mlp_activation(nn.Dense(d, dtype=self.dtype, name="pre_logits")(out["pre_logits"]))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return self.classify(y), out


def _defaults() -> Dict[str, Any]:
  """X-ViT's own `config.model` keys (`xvit_segment_frames`: frames per shift segment, 0 = all)."""
  return {"xvit_div": 8, "xvit_segment_frames": 0, "num_summary_tokens": 0, "head_layers": 1}


def _check(cfg: ml_collections.ConfigDict, input_shape: Sequence[int], field: str) -> None:
  """Checks the shared TimeSformer/X-ViT keys, the shift, summary tokens, head and segments."""
  check_spacetime_keys(cfg, field, ATTENTION_TYPES, DEFAULT_ATTENTION_TYPE)
  div = cfg.xvit_div
  require(isinstance(div, int) and div >= 2, f"{field}.xvit_div",
          f"must be an int >= 2 (2C/div shifted channels must fit in C), got {div!r}")
  require(cfg.hidden_size % div == 0, f"{field}.xvit_div",
          f"{div} does not divide the {cfg.hidden_size} key/value channels (heads x head_dim)")
  require(cfg.num_summary_tokens >= 0, f"{field}.num_summary_tokens",
          f"must be >= 0, got {cfg.num_summary_tokens}")
  require(cfg.head_layers >= 1, f"{field}.head_layers",
          f"must be >= 1 (the temporal-attention head), got {cfg.head_layers}")
  seg = cfg.xvit_segment_frames
  require(isinstance(seg, int) and seg >= 0, f"{field}.xvit_segment_frames",
          f"must be an int >= 0 (0 = the whole clip), got {seg!r}")
  if seg:
    frames = input_shape[0] // cfg.patch_size[2]
    require(frames % seg == 0, f"{field}.xvit_segment_frames",
            f"{seg} does not divide the {frames} frame tokens (dataset.num_frames / patch t)")


def _build(cfg: ml_collections.ConfigDict, num_classes: int) -> XViT:
  return XViT(
      attention_type=cfg.attention_type or DEFAULT_ATTENTION_TYPE, shift_div=cfg.xvit_div,
      segment_frames=cfg.xvit_segment_frames, num_summary_tokens=cfg.num_summary_tokens,
      head_layers=cfg.head_layers, temporal_attention=attention_spec(cfg.temporal_attention),
      time_embed_init_std=cfg.time_embed_init_std,
      **video_transformer_kwargs(cfg, num_classes, FAMILY.mlp_activation))


def _key_counts(cfg: ml_collections.ConfigDict, t: int, s: int) -> KeyCounts:
  """Within-frame keys (+ every frame's summary tokens); the head sees CLS + `t` frames."""
  return {"model.attention": (1 + s + t * cfg.num_summary_tokens, attention_spec(cfg.attention)),
          "model.temporal_attention": (1 + t, attention_spec(cfg.temporal_attention))}


# The temporal-attention head and the summary-token probes are new.
INIT_RULES = InitRules(
    new_modules=("TemporalTransformer", "cls_TemporalTransformer", "pre_logits"),
    new_block_modules=("summary_tokens",), time_embedding="time_embed")

FAMILY = ModelFamily(
    name="xvit", build=_build, defaults=_defaults, check=_check, key_counts=_key_counts,
    mlp_activation="gelu_exact",  # X-ViT's PyTorch `nn.GELU()`
    exclusive_keys=("xvit_segment_frames",),
    stem_names=frozenset({"embedding", "cls", "posembed_input", "time_embed",
                          "cls_TemporalTransformer"}),
    init_rules=INIT_RULES)
