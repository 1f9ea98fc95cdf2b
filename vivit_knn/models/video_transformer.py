"""The fields and helpers every video transformer here shares."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.attention import DENSE, AttentionSpec

Dtype = Any
Activation = Callable[[jax.Array], jax.Array]


def droppath_ramp(stochastic_depth: float, layer: int, num_layers: int) -> float:
  """Stochastic-depth rate of block `layer`: 0 at the first, `stochastic_depth` at the last."""
  return stochastic_depth * layer / max(num_layers - 1, 1)


def maybe_remat(cls: type, remat: bool, static_argnums: Tuple[int, ...] = (2,)) -> type:
  """`cls` rematerialised in the backward pass when `remat`, else `cls`.

  `static_argnums` counts `self` as 0: the default keeps a block's positional
  `deterministic` (argument 2) a Python bool inside the rematerialised call.
  """
  return nn.remat(cls, static_argnums=static_argnums) if remat else cls


class LayerFields(nn.Module):
  """The fields of one transformer block, shared by blocks and stacks of them.

  Attributes:
    mlp_dim: hidden width of the MLP.
    num_heads: attention heads.
    attention: the block's attention (`AttentionSpec`: its kind and options).
    dropout_rate: dropout after the attention and in the MLP.
    attention_dropout_rate: dropout on the attention weights.
    dtype: compute dtype (parameters stay float32).
    mlp_activation: the MLP's activation.
  """

  mlp_dim: int
  num_heads: int
  attention: AttentionSpec = DENSE
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  mlp_activation: Activation = nn.gelu


_LAYER_FIELDS = tuple(f.name for f in dataclasses.fields(LayerFields)
                      if f.name not in ("parent", "name"))


class BlockFields(LayerFields):
  """The fields of one block (block classes subclass this); `droppath_rate`: stochastic depth."""

  droppath_rate: float = 0.0


class StackFields(LayerFields, kw_only=True):
  """The fields of a stack of `num_layers` blocks; encoder classes subclass this.

  `stochastic_depth` is the last block's rate (`droppath_ramp`); `remat`
  rematerialises each block in the backward pass.
  """

  num_layers: int
  stochastic_depth: float = 0.0
  remat: bool = False

  def block_fields(self, layer: int) -> Dict[str, Any]:
    """`BlockFields` keyword arguments of block `layer`, named `encoderblock_<layer>`."""
    return dict({f: getattr(self, f) for f in _LAYER_FIELDS}, name=f"encoderblock_{layer}",
                droppath_rate=droppath_ramp(self.stochastic_depth, layer, self.num_layers))


class VideoTransformer(nn.Module):
  """The classifier fields of ViViT, TimeSformer, X-ViT and the student (`__call__` is theirs).

  Attributes:
    num_classes: classifier outputs.
    hidden_size, num_heads, mlp_dim, num_layers: the transformer's width and depth.
    patch_size: `(h, w, t)` of the tubelet embedding, as scenic's `patches.size`.
    attention: the default attention (its kind and options) of the model's blocks.
    dropout_rate, attention_dropout_rate, stochastic_depth, remat, dtype: as `StackFields`.
    kernel_init_method: tubelet kernel init (`None`, `central_frame_initializer`, ...).
    mlp_activation: every MLP's activation (`encoder.MLP_ACTIVATIONS`; flax's tanh GELU
      here, as scenic's ViViT).
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
    """`StackFields` keyword arguments of the model's main stack."""
    return {f: getattr(self, f) for f in _LAYER_FIELDS + ("num_layers", "stochastic_depth",
                                                          "remat")}
