"""Pretrained ViT experts on the shared encoder core: a CLIP image tower and a VideoMAE encoder.

Both expose their stages (`embed`, `block`, `pool`) so CAST can interleave their
blocks with its cross-attention while the parameter trees stay the experts' own.
VideoMAE has no key bias, so the converter sets our `key/bias` to zero.

With `adapter_dim > 0` every block gets CAST's adapters (`adapters`); stochastic depth
drops only the MLP adapter, never the frozen branches (as in CAST).
"""

from __future__ import annotations

from typing import Any, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vivit_knn.models.adapters import adapter_factory
from vivit_knn.models.encoder import EncoderBlock, exact_gelu, quick_gelu
from vivit_knn.models.video_transformer import droppath_ramp, maybe_remat

Dtype = Any

CLIP_LN_EPSILON = 1e-5  # PyTorch's LayerNorm default, which CLIP uses
VIDEOMAE_LN_EPSILON = 1e-6


def sinusoid_table(num_positions: int, dim: int) -> np.ndarray:
  """VideoMAE's float32 `[num_positions, dim]` table: sin/cos of `p / 10000^(2 floor(j/2) / dim)`.

  Even columns j take the sine, odd ones the cosine.
  """
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  rates = np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)
  angles = pos / rates
  table = np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))
  return table.astype(np.float32)


class ExpertFields(nn.Module, kw_only=True):
  """The fields of both experts (CAST passes its own to each)."""

  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  adapter_dim: int = 0
  mlp_adapter_scale: float = 0.5
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32


class Expert(ExpertFields):
  """Shared parts of both experts: the block stack built from the shared core."""

  def _blocks(self, activation, epsilon: float) -> List[nn.Module]:
    cls = maybe_remat(EncoderBlock, self.remat, static_argnums=(2, 3))
    return [cls(
        mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
        mlp_activation=activation, layer_norm_epsilon=epsilon,
        attention_adapter=adapter_factory(self.adapter_dim, skip=True, dtype=self.dtype),
        mlp_adapter=adapter_factory(
            self.adapter_dim, skip=False, scale=self.mlp_adapter_scale, dtype=self.dtype,
            droppath_rate=droppath_ramp(self.stochastic_depth, i, self.num_layers)),
        name=f"encoderblock_{i}") for i in range(self.num_layers)]

  def block(self, index: int, x: jax.Array, *, train: bool, part: str = "all") -> jax.Array:
    """Applies block `index` (or its `part`: 'attention' / 'mlp') to `[B, N, D]` tokens."""
    # Positional arguments: remat keeps `deterministic` and `part` static by position.
    return self.blocks[index](x, not train, part)

  def __call__(self, inputs: jax.Array, *, train: bool = False):
    """Encodes `inputs` alone (see `embed`); returns `(pool(tokens) [N, D], tokens)`."""
    x = self.embed(inputs)
    for i in range(self.num_layers):
      x = self.block(i, x, train=train)
    return self.pool(x), x


class CLIPVisionExpert(Expert):
  """OpenAI CLIP ViT image encoder; `num_patches` per image (196 at 224/16) sizes its embedding."""

  num_patches: int = 196
  patch_size: Sequence[int] = (16, 16)

  def setup(self):
    """Creates the stem, the blocks and `ln_post`."""
    d = self.hidden_size
    init = nn.initializers.normal(stddev=d ** -0.5)
    self.conv1 = nn.Conv(d, tuple(self.patch_size), strides=tuple(self.patch_size),
                         padding="VALID", use_bias=False, dtype=self.dtype)
    self.class_embedding = self.param("class_embedding", init, (d,), jnp.float32)
    self.positional_embedding = self.param("positional_embedding", init,
                                           (self.num_patches + 1, d), jnp.float32)
    self.ln_pre = nn.LayerNorm(epsilon=CLIP_LN_EPSILON, dtype=self.dtype)
    self.blocks = self._blocks(quick_gelu, CLIP_LN_EPSILON)
    self.ln_post = nn.LayerNorm(epsilon=CLIP_LN_EPSILON, dtype=self.dtype)

  def embed(self, images: jax.Array) -> jax.Array:
    """Images `[N, H, W, C]` -> tokens `[N, 1 + P, D]` (CLS first), after `ln_pre`."""
    x = self.conv1(images)
    n = x.shape[0]
    x = x.reshape(n, -1, x.shape[-1])
    if x.shape[1] != self.num_patches:
      raise ValueError(f"CLIP expert: {x.shape[1]} patches per image, but num_patches="
                       f"{self.num_patches} (positional_embedding size)")
    cls = jnp.broadcast_to(self.class_embedding.astype(x.dtype), (n, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding.astype(x.dtype)
    return self.ln_pre(x)

  def pool(self, tokens: jax.Array) -> jax.Array:
    """`ln_post` of the CLS token, averaged over any frames: `[B, (T,) 1 + P, D]` -> `[B, D]`."""
    cls = tokens[..., 0, :]
    return self.ln_post(jnp.mean(cls, axis=1) if cls.ndim == 3 else cls)


class VideoMAEExpert(Expert):
  """VideoMAE ViT video encoder (see the module doc); `patch_size` is `(h, w, t)`."""

  patch_size: Sequence[int] = (16, 16, 2)

  def setup(self):
    """Creates the tubelet stem, the blocks and `fc_norm`."""
    h, w, t = self.patch_size
    self.patch_embed = nn.Conv(self.hidden_size, (t, h, w), strides=(t, h, w), padding="VALID",
                               dtype=self.dtype)
    self.blocks = self._blocks(exact_gelu, VIDEOMAE_LN_EPSILON)
    self.fc_norm = nn.LayerNorm(epsilon=VIDEOMAE_LN_EPSILON, dtype=self.dtype)

  def embed(self, video: jax.Array) -> jax.Array:
    """Video `[B, T, H, W, C]` -> tokens `[B, (T/t) * P, D]` (time-major), plus the sinusoids."""
    x = self.patch_embed(video)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return x + jnp.asarray(sinusoid_table(x.shape[1], x.shape[2]), x.dtype)

  def pool(self, tokens: jax.Array) -> jax.Array:
    """`fc_norm` of the mean of all tokens: `[B, N, D]` -> `[B, D]`."""
    return self.fc_norm(jnp.mean(tokens, axis=1))
