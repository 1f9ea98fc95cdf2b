"""Transformer encoder shared by every backbone: pre-LN blocks, MLP, stochastic depth.

Parameter names follow scenic's ViViT (`encoderblock_i/{LayerNorm_0,
MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}`, `posembed_input`,
`encoder_norm`) so checkpoints map one to one.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.attention import AttentionSpec, MultiHeadAttention
from vivit_knn.models.partitioning import constrain
from vivit_knn.models.video_transformer import BlockFields, StackFields, maybe_remat

Dtype = Any


class MlpBlock(nn.Module):
  """Two-layer GELU MLP (scenic's `MlpBlock`: `Dense_0`, `Dense_1`)."""

  mlp_dim: int
  dropout_rate: float = 0.0
  activation: Callable[[jax.Array], jax.Array] = nn.gelu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    """Applies Dense -> activation -> dropout -> Dense -> dropout."""
    out_dim = x.shape[-1]
    dense = lambda features: nn.Dense(
        features, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6))
    x = dense(self.mlp_dim)(x)
    x = constrain(x, ("batch",) + (None,) * (x.ndim - 2) + ("mlp",))
    x = self.activation(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = dense(out_dim)(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


# Logical axes of the MLP's parameters (see `vivit_knn.train.sharding`).
MLP_PARAM_AXES = (
    (r"Mlp\w*/Dense_0/kernel$", ("embed", "mlp")),
    (r"Mlp\w*/Dense_0/bias$", ("mlp",)),
    (r"Mlp\w*/Dense_1/kernel$", ("mlp", "embed")),
)


def quick_gelu(x: jax.Array) -> jax.Array:
  """CLIP's GELU approximation `x * sigmoid(1.702 x)`."""
  return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
  """The erf GELU (PyTorch's `nn.GELU()` default); flax's `nn.gelu` is the tanh form."""
  return nn.gelu(x, approximate=False)


# `model.mlp_activation` names: scenic/flax's tanh GELU, PyTorch's erf GELU (timm, TimeSformer,
# X-ViT, VideoMAE) and CLIP's sigmoid approximation.
MLP_ACTIVATIONS = {"gelu_tanh": nn.gelu, "gelu_exact": exact_gelu, "quick_gelu": quick_gelu}


def drop_path(module: nn.Module, x: jax.Array, rate: float, deterministic: bool) -> jax.Array:
  """Stochastic depth: drops whole examples with probability `rate`, survivors scaled 1/(1-rate)."""
  if deterministic or rate <= 0.0:
    return x
  keep = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, shape)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def attention_module(block: BlockFields, name: str, attention: Optional[AttentionSpec] = None,
                     **options: Any) -> MultiHeadAttention:
  """The `MultiHeadAttention` of `block` named `name`; `attention` replaces the block's spec."""
  return MultiHeadAttention(
      num_heads=block.num_heads, attention=block.attention if attention is None else attention,
      dropout_rate=block.attention_dropout_rate, dtype=block.dtype, name=name, **options)


def mlp_residual(block: BlockFields, x: jax.Array, deterministic: bool,
                 norm_name: str = "LayerNorm_1", mlp_name: str = "MlpBlock_0",
                 epsilon: float = 1e-6,
                 adapter: Optional[Callable[..., nn.Module]] = None) -> jax.Array:
  """`x + drop_path(MLP(LN(x)) + adapter(LN(x)))`, creating the modules on `block`."""
  y = nn.LayerNorm(epsilon=epsilon, dtype=block.dtype, name=norm_name)(x)
  z = MlpBlock(block.mlp_dim, dropout_rate=block.dropout_rate,
               activation=block.mlp_activation, dtype=block.dtype,
               name=mlp_name)(y, deterministic=deterministic)
  if adapter is not None:
    z = z + adapter(name="mlp_adapter")(y, deterministic=deterministic)
  return x + drop_path(block, z, block.droppath_rate, deterministic)


class EncoderBlock(BlockFields):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

  `factorized`: ViViT model 4 on `[B, T, S, D]`. For the experts: adapter factories
  (called with `name=`) and `part` ('attention' / 'mlp': that half only, for CAST).
  """

  factorized: bool = False
  layer_norm_epsilon: float = 1e-6
  attention_adapter: Optional[Callable[..., nn.Module]] = None
  mlp_adapter: Optional[Callable[..., nn.Module]] = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool, part: str = "all") -> jax.Array:
    """Applies the block (or its `part`) to `[B, N, D]` tokens (`[B, T, S, D]` for model 4)."""
    if part != "mlp":
      y = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, name="LayerNorm_0")(x)
      y = attention_module(self, "MultiHeadDotProductAttention_0",
                           factorized=self.factorized)(y, deterministic=deterministic)
      if self.attention_adapter is not None:
        y = self.attention_adapter(name="attention_adapter")(y, deterministic=deterministic)
      y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
      x = x + drop_path(self, y, self.droppath_rate, deterministic)
      if part == "attention":
        return x

    return mlp_residual(self, x, deterministic, epsilon=self.layer_norm_epsilon,
                        adapter=self.mlp_adapter)


class FactorizedSelfAttentionBlock(BlockFields):
  """ViViT model 3 on `[B, T, S, D]`: attention along time, then space, then the MLP."""

  def _axis_attention(self, x, axis_name, deterministic):
    y = nn.LayerNorm(dtype=self.dtype, name=f"LayerNorm_{axis_name}")(x)
    y = attention_module(self, f"MultiHeadDotProductAttention_{axis_name}")(
        y, deterministic=deterministic)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return x + drop_path(self, y, self.droppath_rate, deterministic)

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    """Applies time attention (per patch), space attention (per frame), MLP."""
    # Attention runs over the second-to-last axis, so put time there first.
    x = jnp.swapaxes(x, 1, 2)  # [B, S, T, D]
    x = self._axis_attention(x, "time", deterministic)
    x = jnp.swapaxes(x, 1, 2)  # [B, T, S, D]
    x = self._axis_attention(x, "space", deterministic)
    return mlp_residual(self, x, deterministic, norm_name="LayerNorm_mlp", mlp_name="MlpBlock")


class Encoder(StackFields):
  """Learned position embedding, `num_layers` blocks and a final LayerNorm on `[B, N, D]` tokens.

  `model_type`: ViViT's (the image ViT's is 'spacetime'); models 3 and 4 view the tokens
  as `[B, temporal_dims, N / temporal_dims, D]`.
  """

  model_type: str = "spacetime"
  temporal_dims: Optional[int] = None

  def _block(self, layer: int) -> nn.Module:
    if self.model_type == "factorized_self_attention_block":
      return maybe_remat(FactorizedSelfAttentionBlock, self.remat)(**self.block_fields(layer))
    factorized = self.model_type == "factorized_dot_product_attention"
    return maybe_remat(EncoderBlock, self.remat)(factorized=factorized, **self.block_fields(layer))

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Encodes `[B, N, D]` tokens; returns `[B, N, D]`."""
    b, n, d = x.shape
    x = AddPositionEmbedding(name="posembed_input")(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    factorised = self.model_type != "spacetime"
    if factorised:
      x = x.reshape(b, self.temporal_dims, n // self.temporal_dims, d)
    for layer in range(self.num_layers):
      x = self._block(layer)(x, not train)
      x = constrain(x, ("batch",) + (None,) * (x.ndim - 2) + ("embed",))
    x = x.reshape(b, n, d)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class AddPositionEmbedding(nn.Module):
  """Adds a learned `[1, N, D]` embedding (`pos_embedding`, normal(0.02) init)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `x + pos_embedding`."""
    pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                    (1,) + x.shape[1:], jnp.float32)
    return x + pe.astype(x.dtype)
