"""ViViT models 1-4 on the shared encoder; k-NN attention is an attention choice.

Model 1 `spacetime`: one encoder over all tubelet tokens (Uk-ViViT with k-NN).
Model 2 `factorized_encoder`: a spatial encoder per time index, then a temporal
  encoder over the per-frame representations (Dk-ViViT with k-NN in both).
Model 3 `factorized_self_attention_block`: each block attends along time, then space.
Model 4 `factorized_dot_product_attention`: half the heads along time, half along space.

Parameter names follow scenic's ViViT so its checkpoints load without renaming.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.encoder import DENSE, AttentionSpec, Encoder
from vivit_knn.models.video_transformer import VideoTransformer

Dtype = Any

MODEL_TYPES = (
    "spacetime",
    "factorized_encoder",
    "factorized_self_attention_block",
    "factorized_dot_product_attention",
)
CLASSIFIERS = ("token", "gap")
KERNEL_INIT_METHODS = (None, "central_frame_initializer", "average_frame_initializer")

_BLOCK_TYPE = {
    "spacetime": "standard",
    "factorized_self_attention_block": "factorized_self_attention",
    "factorized_dot_product_attention": "factorized_dot_product",
}


def central_frame_initializer(base_init=nn.initializers.lecun_normal()):
  """3D kernel init `(t, h, w, c, D)`: a 2D kernel in the central time slice, zeros elsewhere.

  Scenic's version zeroes along the width axis by mistake; here the zeros are
  along time, so a static video gives the same tokens as the 2D image kernel.
  """

  def init(key, shape, dtype=jnp.float32):
    kernel_2d = base_init(key, shape[1:], dtype)
    kernel = jnp.zeros(shape, dtype)
    return kernel.at[shape[0] // 2].set(kernel_2d)

  return init


def average_frame_initializer(base_init=nn.initializers.lecun_normal()):
  """3D kernel init `(t, h, w, c, D)`: the same 2D kernel in every time slice, divided by t."""

  def init(key, shape, dtype=jnp.float32):
    kernel_2d = base_init(key, shape[1:], dtype)
    return jnp.broadcast_to(kernel_2d / shape[0], shape).astype(dtype)

  return init


def embedding_kernel_init(method: Optional[str]):
  """Returns the tubelet kernel initializer for a `kernel_init_method` name."""
  if method is None:
    return nn.initializers.lecun_normal()
  if method == "central_frame_initializer":
    return central_frame_initializer()
  if method == "average_frame_initializer":
    return average_frame_initializer()
  raise ValueError(
      f"model.kernel_init_method must be one of {KERNEL_INIT_METHODS}, got {method!r}")


def tubelet_embedding(hidden_size: int, patch_size: Sequence[int],
                      kernel_init_method: Optional[str] = None,
                      dtype: Dtype = jnp.float32) -> nn.Conv:
  """Non-overlapping 3D conv `[B, T, H, W, C]` -> `[B, T/t, H/h, W/w, D]`, named `embedding`.

  `patch_size` is `(h, w, t)` as in scenic's `patches.size`; the kernel has shape
  `(t, h, w, C, D)`.
  """
  h, w, t = patch_size
  return nn.Conv(hidden_size, (t, h, w), strides=(t, h, w), padding="VALID",
                 kernel_init=embedding_kernel_init(kernel_init_method), dtype=dtype,
                 name="embedding")


class ViViT(VideoTransformer):
  """Video Vision Transformer returning `(logits, intermediates)`.

  `intermediates` holds `tubelets` (`[B, t, h, w, D]` after the stem), `encoded`
  (final tokens), `pre_logits` (`[B, D]`) and, for the factorised encoder,
  `spatial_encoded` (`[B, t, D]`); distillation losses read these.
  """

  model_type: str = "factorized_encoder"
  spatial_layers: int = 12
  temporal_layers: int = 4
  spatial_attention: AttentionSpec = DENSE
  temporal_attention: AttentionSpec = DENSE
  classifier: str = "token"

  def _encoder(self, name: str, num_layers: int, attention: AttentionSpec,
               block_type: str = "standard", temporal_dims: Optional[int] = None) -> Encoder:
    return Encoder(
        num_layers=num_layers, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        attention=attention, block_type=block_type, temporal_dims=temporal_dims,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        stochastic_depth=self.stochastic_depth, remat=self.remat, dtype=self.dtype,
        mlp_activation=self.mlp_activation, name=name)

  def _pool(self, x: jax.Array, cls_name: str, encoder: Encoder, train: bool):
    """Runs `encoder` on `[B, N, D]` with an optional CLS; returns (pooled, tokens)."""
    if self.classifier == "token":
      cls = self.param(cls_name, nn.initializers.zeros, (1, 1, x.shape[-1]), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[-1])), x], 1)
    x = encoder(x, train=train)
    pooled = x[:, 0] if self.classifier == "token" else jnp.mean(x, axis=1)
    return pooled, x

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Classifies clips `[B, T, H, W, C]`; returns `(logits [B, classes], intermediates)`."""
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"model.model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f"model.classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
    if self.model_type in _BLOCK_TYPE and self.model_type != "spacetime" and self.classifier != "gap":
      raise ValueError(f"model.classifier must be 'gap' for model_type {self.model_type!r}")

    x = tubelet_embedding(self.hidden_size, tuple(self.patch_size),
                          self.kernel_init_method, self.dtype)(x)
    out = {"tubelets": x}
    b, t, h, w, d = x.shape

    if self.model_type == "factorized_encoder":
      frames = x.reshape(b * t, h * w, d)
      per_frame, _ = self._pool(frames, "cls_SpatialTransformer", self._encoder(
          "SpatialTransformer", self.spatial_layers, self.spatial_attention), train)
      per_frame = per_frame.reshape(b, t, d)
      out["spatial_encoded"] = per_frame
      pooled, tokens = self._pool(per_frame, "cls_TemporalTransformer", self._encoder(
          "TemporalTransformer", self.temporal_layers, self.temporal_attention), train)
    else:
      tokens_in = x.reshape(b, t * h * w, d)
      pooled, tokens = self._pool(tokens_in, "cls", self._encoder(
          "Transformer", self.num_layers, self.attention, _BLOCK_TYPE[self.model_type],
          temporal_dims=t), train)

    out["encoded"] = tokens
    out["pre_logits"] = pooled
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                      dtype=jnp.float32, name="output_projection")(pooled)
    return logits, out
