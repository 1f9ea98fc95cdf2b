"""Transformer encoder shared by every backbone: pre-LN blocks, MLP, stochastic depth.

Parameter names follow scenic's ViViT (`encoderblock_i/{LayerNorm_0,
MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}`, `posembed_input`,
`encoder_norm`) so checkpoints map one to one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.attention import MultiHeadAttention
from vivit_knn.models.partitioning import constrain

Dtype = Any
KnnK = Optional[Union[int, float]]


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """Which attention a block uses: `kind` is 'dense' or 'knn'; `knn_k` an int or a fraction of the keys."""

  kind: str = "dense"
  knn_k: KnnK = None


DENSE = AttentionSpec()


class MlpBlock(nn.Module):
  """Two-layer GELU MLP (scenic's `MlpBlock`: `Dense_0`, `Dense_1`)."""

  mlp_dim: int
  out_dim: Optional[int] = None
  dropout_rate: float = 0.0
  activation: Callable[[jax.Array], jax.Array] = nn.gelu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    """Applies Dense -> activation -> dropout -> Dense -> dropout."""
    out_dim = self.out_dim or x.shape[-1]
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
  """Stochastic depth: zeroes whole examples of a residual branch with probability `rate`.

  Survivors are rescaled by 1/(1-rate) so the expected branch output matches
  evaluation, where nothing is dropped.
  """
  if deterministic or rate <= 0.0:
    return x
  keep = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, shape)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def _attention(spec: AttentionSpec, num_heads: int, rate: float, dtype: Dtype,
               name: str, factorized: bool = False) -> MultiHeadAttention:
  return MultiHeadAttention(
      num_heads=num_heads, kind=spec.kind, knn_k=spec.knn_k,
      factorized=factorized, dropout_rate=rate, dtype=dtype, name=name)


BLOCK_PARTS = ("all", "attention", "mlp")


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

  With `factorized=True` (ViViT model 4) the input is `[B, T, S, D]` and half the
  heads attend along time, half along space.

  Options for pretrained image/video experts (CLIP, VideoMAE): `mlp_activation`
  (e.g. `quick_gelu`), `layer_norm_epsilon`, and adapter hooks. A hook is a module
  factory called with `name=`; its module is applied as `adapter(y,
  deterministic=...)`. `attention_adapter` (child `attention_adapter`) replaces the
  attention output y by its result; `mlp_adapter` (child `mlp_adapter`) sees the
  MLP's normalised input and its result is added to the MLP output.
  `part='attention'` / `'mlp'` applies only that residual half, so another
  computation can run between the halves while the parameters stay those of one
  block.
  """

  mlp_dim: int
  num_heads: int
  attention: AttentionSpec = DENSE
  factorized: bool = False
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  dtype: Dtype = jnp.float32
  mlp_activation: Callable[[jax.Array], jax.Array] = nn.gelu
  layer_norm_epsilon: float = 1e-6
  attention_adapter: Optional[Callable[..., nn.Module]] = None
  mlp_adapter: Optional[Callable[..., nn.Module]] = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool, part: str = "all") -> jax.Array:
    """Applies the block (or one `part` of it) to tokens `[B, N, D]` (`[B, T, S, D]` when factorised)."""
    if part not in BLOCK_PARTS:
      raise ValueError(f"part must be one of {BLOCK_PARTS}, got {part!r}")
    layer_norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                                           name=name)
    if part != "mlp":
      y = layer_norm("LayerNorm_0")(x)
      y = _attention(self.attention, self.num_heads, self.attention_dropout_rate,
                     self.dtype, "MultiHeadDotProductAttention_0",
                     factorized=self.factorized)(y, deterministic=deterministic)
      if self.attention_adapter is not None:
        y = self.attention_adapter(name="attention_adapter")(y, deterministic=deterministic)
      y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
      x = x + drop_path(self, y, self.droppath_rate, deterministic)
      if part == "attention":
        return x

    y = layer_norm("LayerNorm_1")(x)
    z = MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate, activation=self.mlp_activation,
                 dtype=self.dtype, name="MlpBlock_0")(y, deterministic=deterministic)
    if self.mlp_adapter is not None:
      z = z + self.mlp_adapter(name="mlp_adapter")(y, deterministic=deterministic)
    return x + drop_path(self, z, self.droppath_rate, deterministic)


class FactorizedSelfAttentionBlock(nn.Module):
  """ViViT model 3: attention along time, then along space, then the MLP.

  Input is `[B, T, S, D]`. Names follow scenic (`LayerNorm_time`,
  `MultiHeadDotProductAttention_time`, `_space`, `LayerNorm_mlp`, `MlpBlock`).
  """

  mlp_dim: int
  num_heads: int
  attention: AttentionSpec = DENSE
  temporal_attention: Optional[AttentionSpec] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  dtype: Dtype = jnp.float32
  mlp_activation: Callable[[jax.Array], jax.Array] = nn.gelu

  def _axis_attention(self, x, axis_name, spec, deterministic):
    y = nn.LayerNorm(dtype=self.dtype, name=f"LayerNorm_{axis_name}")(x)
    y = _attention(spec, self.num_heads, self.attention_dropout_rate, self.dtype,
                   f"MultiHeadDotProductAttention_{axis_name}")(
                       y, deterministic=deterministic)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return x + drop_path(self, y, self.droppath_rate, deterministic)

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    """Applies time attention (per patch), space attention (per frame), MLP."""
    # Attention runs over the second-to-last axis, so put time there first.
    x = jnp.swapaxes(x, 1, 2)  # [B, S, T, D]
    x = self._axis_attention(x, "time", self.temporal_attention or self.attention,
                             deterministic)
    x = jnp.swapaxes(x, 1, 2)  # [B, T, S, D]
    x = self._axis_attention(x, "space", self.attention, deterministic)
    y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_mlp")(x)
    y = MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate, activation=self.mlp_activation,
                 dtype=self.dtype, name="MlpBlock")(y, deterministic=deterministic)
    return x + drop_path(self, y, self.droppath_rate, deterministic)


BLOCK_TYPES = ("standard", "factorized_self_attention", "factorized_dot_product")


class Encoder(nn.Module):
  """Learned position embedding, `num_layers` blocks and a final LayerNorm.

  Tokens come in as `[B, N, D]`. For the factorised block types, `temporal_dims`
  says how to view them as `[B, T, N/T, D]`; the output is flattened back.
  Stochastic depth grows linearly from 0 at the first block to
  `stochastic_depth` at the last. `mlp_activation` goes to every block's MLP.
  """

  num_layers: int
  mlp_dim: int
  num_heads: int
  attention: AttentionSpec = DENSE
  temporal_attention: Optional[AttentionSpec] = None
  block_type: str = "standard"
  temporal_dims: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  mlp_activation: Callable[[jax.Array], jax.Array] = nn.gelu

  def _block(self, layer: int) -> nn.Module:
    rate = self.stochastic_depth * layer / max(self.num_layers - 1, 1)
    common = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                  attention=self.attention, dropout_rate=self.dropout_rate,
                  attention_dropout_rate=self.attention_dropout_rate,
                  droppath_rate=rate, dtype=self.dtype, mlp_activation=self.mlp_activation,
                  name=f"encoderblock_{layer}")
    if self.block_type == "factorized_self_attention":
      cls = FactorizedSelfAttentionBlock
      common["temporal_attention"] = self.temporal_attention
    else:
      cls = EncoderBlock
      common["factorized"] = self.block_type == "factorized_dot_product"
    if self.remat:
      # `deterministic` is passed positionally (argument 2, counting self) and
      # must stay a Python bool inside the rematerialised call.
      cls = nn.remat(cls, static_argnums=(2,))
    return cls(**common)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Encodes `[B, N, D]` tokens; returns `[B, N, D]`."""
    if self.block_type not in BLOCK_TYPES:
      raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {self.block_type!r}")
    b, n, d = x.shape
    x = AddPositionEmbedding(name="posembed_input")(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    factorised = self.block_type != "standard"
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
