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

  `static_argnums` (`self` is 0) keeps a block's positional `deterministic` a Python bool.
  """
  return nn.remat(cls, static_argnums=static_argnums) if remat else cls


class LayerFields(nn.Module):
  """The fields of one transformer block, shared by blocks and stacks (parameters stay float32)."""

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
  """The fields of a stack of `num_layers` blocks; `stochastic_depth`: the last block's rate."""

  num_layers: int
  stochastic_depth: float = 0.0
  remat: bool = False

  def block_fields(self, layer: int) -> Dict[str, Any]:
    """`BlockFields` keyword arguments of block `layer`, named `encoderblock_<layer>`."""
    return dict({f: getattr(self, f) for f in _LAYER_FIELDS}, name=f"encoderblock_{layer}",
                droppath_rate=droppath_ramp(self.stochastic_depth, layer, self.num_layers))


class VideoTransformer(nn.Module):
  """The classifier fields of ViViT, TimeSformer, X-ViT and the student (`__call__` is theirs).

  `patch_size`: the tubelets' `(h, w, t)`, as scenic's `patches.size`; `kernel_init_method`:
  one of `vivit.KERNEL_INIT_METHODS`.
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

  def prepend_cls(self, x: jax.Array, name: str = "cls") -> jax.Array:
    """`[CLS, x]` for tokens `[B, N, D]`; the CLS is a zero-initialised parameter `name`."""
    b, _, d = x.shape
    cls = self.param(name, nn.initializers.zeros, (1, 1, d), jnp.float32)
    return jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)

  def classify(self, features: jax.Array) -> jax.Array:
    """Float32 logits of `[B, D]` features by the zero-initialised `output_projection`."""
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=jnp.float32,
                    name="output_projection")(features)
