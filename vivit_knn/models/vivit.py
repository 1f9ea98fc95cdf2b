"""ViViT models 1-4 on the shared encoder (k-NN attention is an attention choice), scenic's names.

Model 1 `spacetime`: one encoder over all tubelet tokens (Uk-ViViT with k-NN).
Model 2 `factorized_encoder`: a spatial encoder per time index, then a temporal
  encoder over the per-frame representations (Dk-ViViT with k-NN in both); built
  from `spatial_transformer` and `temporal_transformer` only.
Model 3 `factorized_self_attention_block`: each block attends along time, then space.
Model 4 `factorized_dot_product_attention`: half the heads along time, half along space.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vivit_knn.models.attention import DENSE, AttentionSpec, attention_config
from vivit_knn.models.encoder import Encoder
from vivit_knn.models.family import (InactiveKeys, KeyCounts, ModelFamily, attention_spec,
                                     require, video_transformer_kwargs)
from vivit_knn.models.init_rules import InitRules, image_names
from vivit_knn.models.video_transformer import VideoTransformer

MODEL_TYPES = (
    "spacetime",
    "factorized_encoder",
    "factorized_self_attention_block",
    "factorized_dot_product_attention",
)
CLASSIFIERS = ("token", "gap")
KERNEL_INIT_METHODS = (None, "central_frame_initializer", "average_frame_initializer")


def central_frame_initializer(base_init=nn.initializers.lecun_normal()):
  """3D kernel init `(t, h, w, c, D)`: a 2D kernel in the central time slice, zeros elsewhere."""

  def init(key, shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype).at[shape[0] // 2].set(base_init(key, shape[1:], dtype))

  return init


def average_frame_initializer(base_init=nn.initializers.lecun_normal()):
  """3D kernel init `(t, h, w, c, D)`: the same 2D kernel in every time slice, divided by t."""

  def init(key, shape, dtype=jnp.float32):
    return jnp.broadcast_to(base_init(key, shape[1:], dtype) / shape[0], shape).astype(dtype)

  return init


def tubelet_embedding(model: VideoTransformer) -> nn.Conv:
  """`model`'s non-overlapping 3D conv `embedding`: `[B, T, H, W, C]` -> `[B, T/t, H/h, W/w, D]`."""
  h, w, t = model.patch_size
  init = {None: nn.initializers.lecun_normal, "central_frame_initializer":
          central_frame_initializer, "average_frame_initializer": average_frame_initializer}
  return nn.Conv(model.hidden_size, (t, h, w), strides=(t, h, w), padding="VALID",
                 kernel_init=init[model.kernel_init_method](), dtype=model.dtype,
                 name="embedding")


class ViViT(VideoTransformer):
  """Video Vision Transformer returning `(logits, intermediates)`.

  `intermediates`: `tubelets` (`[B, t, h, w, D]`), `encoded` (final tokens), `pre_logits`
  (`[B, D]`) and, for the factorised encoder, `spatial_encoded` (`[B, t, D]`).
  """

  model_type: str = "factorized_encoder"
  spatial_layers: int = 12
  temporal_layers: int = 4
  spatial_attention: AttentionSpec = DENSE
  temporal_attention: AttentionSpec = DENSE
  classifier: str = "token"

  def _encoder(self, name: str, num_layers: int, attention: AttentionSpec,
               model_type: str = "spacetime", temporal_dims: Optional[int] = None) -> Encoder:
    return Encoder(model_type=model_type, temporal_dims=temporal_dims, name=name,
                   **dict(self.stack_fields(), num_layers=num_layers, attention=attention))

  def _pool(self, x: jax.Array, cls_name: str, encoder: Encoder, train: bool):
    """Runs `encoder` on `[B, N, D]` with an optional CLS; returns (pooled, tokens)."""
    if self.classifier == "token":
      x = self.prepend_cls(x, cls_name)
    x = encoder(x, train=train)
    pooled = x[:, 0] if self.classifier == "token" else jnp.mean(x, axis=1)
    return pooled, x

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Classifies clips `[B, T, H, W, C]`; returns `(logits [B, classes], intermediates)`."""
    x = tubelet_embedding(self)(x)
    out = {"tubelets": x}
    b, t, h, w, d = x.shape

    if self.model_type == "factorized_encoder":
      per_frame, _ = self._pool(x.reshape(b * t, h * w, d), "cls_SpatialTransformer", self._encoder(
          "SpatialTransformer", self.spatial_layers, self.spatial_attention), train)
      per_frame = per_frame.reshape(b, t, d)
      out["spatial_encoded"] = per_frame
      pooled, tokens = self._pool(per_frame, "cls_TemporalTransformer", self._encoder(
          "TemporalTransformer", self.temporal_layers, self.temporal_attention), train)
    else:
      tokens_in = x.reshape(b, t * h * w, d)
      pooled, tokens = self._pool(tokens_in, "cls", self._encoder(
          "Transformer", self.num_layers, self.attention, self.model_type,
          temporal_dims=t), train)

    out["encoded"], out["pre_logits"] = tokens, pooled
    return self.classify(pooled), out


def _defaults() -> Dict[str, Any]:
  """ViViT's own `config.model` keys: the layout and the factorised encoder's two stacks."""
  return {"model_type": "factorized_encoder",
          "spatial_transformer": {"num_layers": 12, "attention": attention_config()},
          "temporal_transformer": {"num_layers": 4, "attention": attention_config()}}


def _check(cfg: ml_collections.ConfigDict, input_shape: Sequence[int], field: str) -> None:
  """Checks `model_type` and `classifier` (models 3 and 4 have no CLS; model 4 splits heads)."""
  del input_shape
  require(cfg.model_type in MODEL_TYPES, f"{field}.model_type",
          f"must be one of {MODEL_TYPES}, got {cfg.model_type!r}")
  require(cfg.classifier in CLASSIFIERS, f"{field}.classifier",
          f"must be one of {CLASSIFIERS}, got {cfg.classifier!r}")
  if cfg.model_type in MODEL_TYPES[2:]:  # models 3 and 4 have no CLS
    require(cfg.classifier == "gap", f"{field}.classifier",
            f"must be 'gap' for model_type {cfg.model_type!r} (no CLS token there)")
  if cfg.model_type == "factorized_dot_product_attention":
    require(cfg.num_heads % 2 == 0, f"{field}.num_heads",
            f"must be even for model 4 (half the heads per axis), got {cfg.num_heads}")


def _build(cfg: ml_collections.ConfigDict, num_classes: int) -> ViViT:
  return ViViT(
      model_type=cfg.model_type,
      spatial_layers=cfg.spatial_transformer.num_layers,
      temporal_layers=cfg.temporal_transformer.num_layers,
      spatial_attention=attention_spec(cfg.spatial_transformer.attention),
      temporal_attention=attention_spec(cfg.temporal_transformer.attention),
      classifier=cfg.classifier,
      **video_transformer_kwargs(cfg, num_classes, FAMILY.mlp_activation))


def _key_counts(cfg: ml_collections.ConfigDict, t: int, s: int) -> KeyCounts:
  """Keys per attention for `t` tubelet times of `s` patches (plus the CLS if any)."""
  cls = 1 if cfg.classifier == "token" else 0
  if cfg.model_type == "factorized_encoder":
    return {"model.spatial_transformer.attention":
                (s + cls, attention_spec(cfg.spatial_transformer.attention)),
            "model.temporal_transformer.attention":
                (t + cls, attention_spec(cfg.temporal_transformer.attention))}
  spec = attention_spec(cfg.attention)
  if cfg.model_type == "spacetime":
    return {"model.attention": (t * s + cls, spec)}
  # Models 3 and 4 attend along time and along space separately; k must fit both.
  return {"model.attention": (min(t, s), spec)}


def _inactive_keys(cfg: ml_collections.ConfigDict, field: str) -> InactiveKeys:
  """The common keys this layout never reads, and what it reads instead."""
  if cfg.model_type != "factorized_encoder":
    one = (f"{field}.model_type={cfg.model_type!r} has one encoder, set by {field}.num_layers "
           f"and {field}.attention")
    time = (f"ViViT has no separate time attention, {field}.model_type={cfg.model_type!r} "
            f"attends with {field}.attention", ("attention",))
    return {"temporal_attention": time, "spatial_transformer": (one, ()),
            "temporal_transformer": (one, ())}
  why = (f"{field}.model_type='factorized_encoder' builds its spatial and temporal encoders "
         "from their own keys")
  return {
      "attention": (why, ("spatial_transformer.attention", "temporal_transformer.attention")),
      "num_layers": (why, ("spatial_transformer.num_layers", "temporal_transformer.num_layers")),
      "temporal_attention": (why, ("temporal_transformer.attention",)),
  }


def _image_encoder(cfg: ml_collections.ConfigDict) -> Tuple[str, str]:
  """The encoder and CLS that take the image ViT's: model 2's spatial ones, else its own names."""
  if cfg.model_type == "factorized_encoder":
    return "SpatialTransformer", "cls_SpatialTransformer"
  return image_names(cfg)


# The factorised encoder's temporal encoder is new (one position per time step); model 3's
# time and space halves start as copies of the image block's attention, its MLP half as its MLP.
INIT_RULES = InitRules(
    image_encoder=_image_encoder,
    new_modules=("TemporalTransformer", "cls_TemporalTransformer"),
    from_spatial=(("LayerNorm_time", "LayerNorm_0"), ("LayerNorm_space", "LayerNorm_0"),
                  ("MultiHeadDotProductAttention_time", "MultiHeadDotProductAttention_0"),
                  ("MultiHeadDotProductAttention_space", "MultiHeadDotProductAttention_0"),
                  ("LayerNorm_mlp", "LayerNorm_1"), ("MlpBlock", "MlpBlock_0")),
    time_encoders=(("TemporalTransformer", "cls_TemporalTransformer"),))

FAMILY = ModelFamily(
    name="vivit", build=_build, defaults=_defaults, check=_check, key_counts=_key_counts,
    inactive_keys=_inactive_keys,
    exclusive_keys=("spatial_transformer", "temporal_transformer"),
    mlp_activation="gelu_tanh",  # scenic's (flax's tanh GELU)
    stem_names=frozenset({"embedding", "cls", "posembed_input", "cls_SpatialTransformer",
                          "cls_TemporalTransformer"}),
    init_rules=INIT_RULES)
