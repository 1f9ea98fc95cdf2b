"""ResNet-18/34/50/101/152 in torchvision's layout: the 2D per-frame distillation teacher.

Names mirror torchvision's (`layer{1-4}_{j}` for `layer{1-4}.{j}`, `downsample_conv` /
`downsample_bn` for `downsample.0/1`), so `vivit_knn.weights.torchvision_resnet` maps
a state dict one to one; the Bottleneck strides its 3x3 conv ("ResNet v1.5").
BatchNorm statistics live in `batch_stats`; `train=False` normalises with them.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# depth -> (block design: torchvision's BasicBlock or Bottleneck, blocks per stage)
DEPTHS: Dict[int, Tuple[str, Tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
BN_EPSILON = 1e-5  # torchvision's default


def stage_channels(depth: int, width: int = 64) -> Tuple[int, ...]:
  """Output channels of `layer1..layer4` (e.g. 2048 for layer4 of ResNet-50/101)."""
  design = DEPTHS[depth][0]
  return tuple(width * 2 ** i * EXPANSION[design] for i in range(4))


def feature_size(size: int, stage: int = 4) -> int:
  """Side of `layer{stage}`'s output for a `size`-pixel input (stem, layers 2-4 halve: 224 -> 7)."""
  halvings = 2 + max(0, min(stage, 4) - 1)
  for _ in range(halvings):
    size = -(-size // 2)
  return size


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Dtype) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                 name=name)


class _Block(nn.Module):
  """torchvision BasicBlock (`design='basic'`) or Bottleneck, with its projection shortcut."""

  design: str
  planes: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Applies the block to NHWC `x`."""
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=BN_EPSILON, dtype=self.dtype)
    out_features = self.planes * EXPANSION[self.design]
    if self.design == "basic":
      y = nn.relu(norm(name="bn1")(_conv(self.planes, 3, self.stride, "conv1", self.dtype)(x)))
      y = norm(name="bn2")(_conv(self.planes, 3, 1, "conv2", self.dtype)(y))
    else:
      y = nn.relu(norm(name="bn1")(_conv(self.planes, 1, 1, "conv1", self.dtype)(x)))
      y = nn.relu(norm(name="bn2")(_conv(self.planes, 3, self.stride, "conv2", self.dtype)(y)))
      y = norm(name="bn3")(_conv(out_features, 1, 1, "conv3", self.dtype)(y))
    if self.stride != 1 or x.shape[-1] != out_features:
      x = norm(name="downsample_bn")(
          _conv(out_features, 1, self.stride, "downsample_conv", self.dtype)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Image ResNet `[B, H, W, 3] -> (logits, {'layer1'..'layer4' (NHWC), 'pre_logits'})`."""

  num_classes: int
  depth: int = 50
  width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Classifies images; BatchNorm uses its running statistics unless `train`."""
    design, blocks = DEPTHS[self.depth]
    x = _conv(self.width, 7, 2, "conv1", self.dtype)(x.astype(self.dtype))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON,
                             dtype=self.dtype, name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {}
    for stage, count in enumerate(blocks):
      for j in range(count):
        stride = 2 if stage > 0 and j == 0 else 1
        x = _Block(design, self.width * 2 ** stage, stride, self.dtype,
                   name=f"layer{stage + 1}_{j}")(x, train=train)
      features[f"layer{stage + 1}"] = x
    features["pre_logits"] = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(features["pre_logits"]), features


def frame_features(model: ResNet, variables: Any, clips: jax.Array,
                   stage: int = 4) -> Tuple[jax.Array, jax.Array]:
  """`model` on each frame of clips `[B, T, H, W, C]`: `(mean logits, layer{stage} maps)`."""
  b, t = clips.shape[:2]
  logits, feats = model.apply(variables, clips.reshape((b * t,) + clips.shape[2:]), train=False)
  fmap = feats[f"layer{stage}"]
  return (jnp.mean(logits.reshape(b, t, -1).astype(jnp.float32), axis=1),
          fmap.reshape((b, t) + fmap.shape[1:]))

