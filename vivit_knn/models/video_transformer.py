"""The fields every video transformer classifier here shares.

`VideoTransformer` is a base for ViViT, TimeSformer, X-ViT and the distillation
student: width, depth, patching, the default attention, regularisation and
compute dtype. Each model adds its own fields and may change a default (e.g.
TimeSformer's single-frame patches, and the erf GELU of TimeSformer and X-ViT,
whose original code is PyTorch); `models.registry` fills these from
`config.model` in one place.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.encoder import DENSE, AttentionSpec, Dtype


class VideoTransformer(nn.Module):
  """Shared fields (see module doc); subclasses define `__call__`.

  Attributes:
    num_classes: classifier outputs.
    hidden_size, num_heads, mlp_dim, num_layers: the transformer's width and depth.
    patch_size: `(h, w, t)` of the tubelet embedding, as scenic's `patches.size`.
    attention: the default attention (dense or k-NN) of the model's blocks.
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
  mlp_activation: Callable[[jax.Array], jax.Array] = nn.gelu
