"""Feature aligner: student patch tokens -> the shape of a CNN teacher's feature map.

Tokens `[B, t, h, w, D]` are taken frame by frame as a `h x w` grid, resized
bilinearly to the teacher map's `H' x W'`, projected by a conv to the teacher's
`C'` channels, layer-normalised over channels and passed through a ReLU (the
teacher's maps are post-ReLU). The result `[B, t, H', W', C']` is compared with
the teacher's per-frame maps averaged over each tubelet's frames.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class FeatureAligner(nn.Module):
  """reshape -> bilinear resize -> conv -> LayerNorm -> ReLU.

  Attributes:
    features: teacher channels `C'` (e.g. 2048 for ResNet-50/101 layer4).
    kernel_size: conv kernel side (1 = a per-position linear map).
    dtype: computation dtype.
  """

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
