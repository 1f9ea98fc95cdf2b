"""The fields and helpers every video transformer here shares: one place for each.

* `VideoTransformer`: the classifier base of ViViT, TimeSformer, X-ViT and the
  distillation student (width, depth, patching, the default attention,
  regularisation, compute dtype). Each model adds its own fields and may change a
  default (e.g. TimeSformer's single-frame patches, and the erf GELU of
  TimeSformer and X-ViT, whose original code is PyTorch); `models.family` fills
  these from `config.model` in one place.
* `BlockFields`: the fields of one transformer block (dims, attention, dropout,
  stochastic-depth rate, dtype, MLP activation).
* `StackFields`: the fields of a stack of blocks, and `block_fields(layer)`, the
  `BlockFields` of its layer `layer` (with the stochastic-depth ramp).
* `droppath_ramp`: stochastic depth growing linearly from 0 at the first block to
  the configured rate at the last.
* `maybe_remat`: a block class rematerialised in the backward pass, or as is.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.attention import DENSE, AttentionSpec

Dtype = Any
Activation = Callable[[jax.Array], jax.Array]


def droppath_ramp(stochastic_depth: float, layer: int, num_layers: int) -> float:
  """Stochastic-depth rate of block `layer` of `num_layers`.

  Grows linearly: 0 at the first block, `stochastic_depth` at the last.
  """
  return stochastic_depth * layer / max(num_layers - 1, 1)


def maybe_remat(cls: type, remat: bool, static_argnums: Tuple[int, ...] = (2,)) -> type:
  """`cls` rematerialised in the backward pass when `remat`, else `cls`.

  `static_argnums` counts `self` as 0: the default keeps a block's positional
  `deterministic` (argument 2) a Python bool inside the rematerialised call.
  """
  return nn.remat(cls, static_argnums=static_argnums) if remat else cls


class BlockFields(nn.Module):
  """The fields of one transformer block; block classes subclass this.

  Attributes:
    mlp_dim: hidden width of the MLP.
    num_heads: attention heads.
    attention: the block's attention (`AttentionSpec`: its kind and options).
    dropout_rate: dropout after the attention and in the MLP.
    attention_dropout_rate: dropout on the attention weights.
    droppath_rate: stochastic depth of the residual branches.
    dtype: compute dtype (parameters stay float32).
    mlp_activation: the MLP's activation.
  """

  mlp_dim: int
  num_heads: int
  attention: AttentionSpec = DENSE
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  dtype: Dtype = jnp.float32
  mlp_activation: Activation = nn.gelu


class StackFields(nn.Module):
  """The fields of a stack of `num_layers` blocks; encoder classes subclass this.

  Attributes:
    num_layers: blocks in the stack.
    mlp_dim, num_heads, attention, dropout_rate, attention_dropout_rate, dtype,
      mlp_activation: passed to every block (see `BlockFields`).
    stochastic_depth: the rate of the last block (see `droppath_ramp`).
    remat: rematerialise each block in the backward pass.
  """

  num_layers: int
  mlp_dim: int
  num_heads: int
  attention: AttentionSpec = DENSE
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  mlp_activation: Activation = nn.gelu

  def block_fields(self, layer: int, attention: Optional[AttentionSpec] = None) -> Dict[str, Any]:
    """`BlockFields` keyword arguments of block `layer`, named `encoderblock_<layer>`.

    `attention` replaces the stack's attention when given.
    """
    return dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                attention=self.attention if attention is None else attention,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                droppath_rate=droppath_ramp(self.stochastic_depth, layer, self.num_layers),
                dtype=self.dtype, mlp_activation=self.mlp_activation,
                name=f"encoderblock_{layer}")


class VideoTransformer(nn.Module):
  """Shared classifier fields (see module doc); subclasses define `__call__`.

  Attributes:
    num_classes: classifier outputs.
    hidden_size, num_heads, mlp_dim, num_layers: the transformer's width and depth.
    patch_size: `(h, w, t)` of the tubelet embedding, as scenic's `patches.size`.
    attention: the default attention (its kind and options) of the model's blocks.
    dropout_rate, attention_dropout_rate, stochastic_depth: regularisation
      (stochastic depth grows linearly to this rate over the layers).
    kernel_init_method: tubelet kernel init (`None`, `central_frame_initializer`, ...).
    remat: rematerialise each block in the backward pass.
    dtype: compute dtype (parameters stay float32).
    mlp_activation: the activation of every block's MLP (one of
      `encoder.MLP_ACTIVATIONS`); flax's tanh GELU here, as scenic's ViViT.
  """

  num_classes: int
  hidden_size: int = 768
  patch_size: Sequence[int] = (16, 16, 2)
  num_heads: int = 12
  mlp_dim: int = 3072
  num_layers: int = 12
  attention: AttentionSpec = DENSE
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  kernel_init_method: Optional[str] = None
  remat: bool = False
  dtype: Dtype = jnp.float32
  mlp_activation: Activation = nn.gelu

  def stack_fields(self) -> Dict[str, Any]:
    """`StackFields` keyword arguments of the model's main stack (its own depth and options)."""
    return dict(num_layers=self.num_layers, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                attention=self.attention, dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                stochastic_depth=self.stochastic_depth, remat=self.remat, dtype=self.dtype,
                mlp_activation=self.mlp_activation)
