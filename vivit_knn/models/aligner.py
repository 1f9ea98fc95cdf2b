"""Feature aligner: student tokens `[B, t, h, w, D]` -> a CNN teacher's maps `[B, t, H', W', C']`.

Ends in ReLU as the teacher's maps, with which it is compared averaged over each tubelet's frames.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class FeatureAligner(nn.Module):
  """reshape -> bilinear resize -> conv (`kernel_size`) -> LayerNorm -> ReLU, to `features` C'."""

  features: int
  kernel_size: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, size: Sequence[int]) -> jax.Array:
    """Maps `[B, t, h, w, D]` tokens to `[B, t, size[0], size[1], features]`."""
    b, t, h, w, d = tokens.shape
    x = tokens.reshape(b * t, h, w, d)
    # No antialiasing: the same sampling as a framework's plain bilinear interpolate
    # (half-pixel centres), also when the map shrinks.
    x = jax.image.resize(x, (b * t, size[0], size[1], d), method="bilinear", antialias=False)
    k = self.kernel_size
    x = nn.Conv(self.features, (k, k), padding="SAME", dtype=self.dtype, name="conv")(x)
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
    x = nn.relu(x)
    return x.reshape((b, t) + x.shape[1:])
