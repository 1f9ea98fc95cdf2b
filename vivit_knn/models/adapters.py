"""Bottleneck adapters (AIM / CAST style) for frozen transformer experts.

An adapter is `Dense(D -> bottleneck) -> GELU -> Dense(bottleneck -> D)` whose
second layer starts at zero, so a freshly added adapter changes nothing. Three
flavours, by where it sits:

* on an attention output, with a skip: `y + adapter(y)` (`skip=True`);
* beside an MLP, on the MLP's input, scaled: `scale * adapter(x)` added to the
  MLP output (`skip=False, scale=0.5`);
* on pooled features before a classifier: `adapter(x)` alone (`skip=False`).

`adapter_factory` returns the module factories that `EncoderBlock`'s adapter
hooks expect.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.encoder import drop_path, exact_gelu

Dtype = Any


class Adapter(nn.Module):
  """`skip * x + scale * up(gelu(down(x)))`, with `up` zero-initialised.

  Attributes:
    bottleneck: width of the hidden layer (192 for ViT-B in CAST).
    skip: whether the input is added back.
    scale: factor on the adapter branch.
    droppath_rate: stochastic depth on the adapter branch only.
    dtype: computation dtype.
  """

  bottleneck: int
  skip: bool = True
  scale: float = 1.0
  droppath_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Applies the adapter to `[..., D]` features; returns `[..., D]`."""
    y = nn.Dense(self.bottleneck, dtype=self.dtype,
                 kernel_init=nn.initializers.truncated_normal(stddev=0.02), name="down")(x)
    y = exact_gelu(y)
    y = nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=nn.initializers.zeros,
                 name="up")(y)
    if self.scale != 1.0:
      y = self.scale * y
    y = drop_path(self, y, self.droppath_rate, deterministic)
    return x + y if self.skip else y


def adapter_factory(bottleneck: int, *, skip: bool, scale: float = 1.0,
                    droppath_rate: float = 0.0,
                    dtype: Dtype = jnp.float32) -> Optional[Callable[..., nn.Module]]:
  """A factory `(name=...) -> Adapter` for `EncoderBlock`'s hooks; None when `bottleneck` is 0."""
  if bottleneck <= 0:
    return None
  return functools.partial(Adapter, bottleneck=bottleneck, skip=skip, scale=scale,
                           droppath_rate=droppath_rate, dtype=dtype)
