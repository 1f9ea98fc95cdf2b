"""Bottleneck adapters (AIM / CAST style) for frozen transformer experts.

A zero second layer makes a new adapter change nothing: on an attention output with a
skip, beside an MLP on its input (`skip=False, scale=0.5`), or alone on pooled features.
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
  """`skip * x + scale * up(gelu(down(x)))`, `up` zero-initialised; drop path on the branch only."""

  bottleneck: int
  skip: bool = True
  scale: float = 1.0
  droppath_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Applies the adapter to `[..., D]` features; returns `[..., D]`."""
    y = exact_gelu(nn.Dense(self.bottleneck, dtype=self.dtype,
                            kernel_init=nn.initializers.truncated_normal(stddev=0.02),
                            name="down")(x))
    y = nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=nn.initializers.zeros, name="up")(y)
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
