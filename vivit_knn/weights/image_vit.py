"""The image ViT every converter produces: its Flax module and its parameter tree.

The tree uses the original ViT / scenic names on our shared encoder:

  embedding/{kernel (h, w, C, D), bias}
  cls (1, 1, D)
  Transformer/posembed_input/pos_embedding (1, 1 + N, D)   CLS row first
  Transformer/encoderblock_i/{LayerNorm_0, MultiHeadDotProductAttention_0
      {query, key, value: kernel (D, H, D/H), bias (H, D/H); out: kernel (H, D/H, D)},
      LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}}
  Transformer/encoder_norm/{scale, bias}
  pre_logits/{kernel, bias}   optional (ImageNet-21k representation layer, tanh)
  head/{kernel, bias}         optional (the classifier; never restored into a video model)

A converted TimeSformer checkpoint also carries `Transformer/time_embed` and, per
block, `temporal_norm1`, `temporal_attn` and `temporal_fc` (`TIMESFORMER_EXTRAS`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from vivit_knn.models.encoder import Encoder
from vivit_knn.weights.inflate import square_side
from vivit_knn.weights.tree import Flat, check_shapes, flatten, raise_unmatched

_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
TIMESFORMER_EXTRAS = re.compile(
    r"^Transformer/(time_embed|encoderblock_\d+/(temporal_norm1|temporal_attn|temporal_fc)/.*)$")


@dataclasses.dataclass(frozen=True)
class ImageViTArch:
  """Hyper-parameters of an image ViT tree, read from its shapes."""

  patch_size: Sequence[int]
  hidden_size: int
  num_heads: int
  mlp_dim: int
  num_layers: int
  num_classes: int = 0
  representation_size: Optional[int] = None


class ImageViT(nn.Module):
  """ViT on images `[B, H, W, C]` -> `(logits (CLS features if no head), {'pre_logits'})`."""

  arch: ImageViTArch

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False):
    """Patchify, prepend CLS, encode, classify from the CLS."""
    a = self.arch
    ph, pw = a.patch_size
    x = nn.Conv(a.hidden_size, (ph, pw), strides=(ph, pw), padding="VALID",
                name="embedding")(images)
    b, h, w, d = x.shape
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x.reshape(b, h * w, d)], 1)
    x = Encoder(num_layers=a.num_layers, mlp_dim=a.mlp_dim, num_heads=a.num_heads,
                name="Transformer")(x, train=train)
    pooled = x[:, 0]
    out = {"pre_logits": pooled}
    if a.representation_size:
      pooled = jnp.tanh(nn.Dense(a.representation_size, name="pre_logits")(pooled))
    if a.num_classes:
      pooled = nn.Dense(a.num_classes, name="head")(pooled)
    return pooled, out


def infer_arch(tree: Mapping[str, Any]) -> ImageViTArch:
  """Reads an `ImageViTArch` from an image ViT tree's shapes."""
  flat = flatten(tree)
  try:
    kernel = flat["embedding/kernel"]
    query = flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"]
    mlp = flat["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"]
  except KeyError as err:
    raise ValueError(f"not an image ViT tree in our naming: no {err.args[0]!r}") from None
  layers = {int(m.group(1)) for m in map(_BLOCK.match, flat) if m}
  head, rep = flat.get("head/kernel"), flat.get("pre_logits/kernel")
  return ImageViTArch(
      patch_size=tuple(int(s) for s in kernel.shape[:2]), hidden_size=int(kernel.shape[-1]),
      num_heads=int(query.shape[1]), mlp_dim=int(mlp.shape[1]), num_layers=len(layers),
      num_classes=0 if head is None else int(head.shape[1]),
      representation_size=None if rep is None else int(rep.shape[1]))


def expected_shapes(arch: ImageViTArch, num_patches: int) -> Flat:
  """Flat `{path: ShapeDtypeStruct}` of the tree `ImageViT(arch)` has for `num_patches`."""
  side = square_side(num_patches, "position embedding")
  ph, pw = arch.patch_size
  images = jnp.zeros((1, side * ph, side * pw, 3))
  shapes = jax.eval_shape(lambda: ImageViT(arch).init(jax.random.key(0), images))["params"]
  return traverse_util.flatten_dict(shapes, sep="/")


def check_image_tree(tree: Mapping[str, Any], what: str,
                     allow_timesformer: bool = True) -> ImageViTArch:
  """Checks `tree` is exactly an image ViT tree (plus TimeSformer extras when allowed)."""
  flat = flatten(tree)
  arch = infer_arch(tree)
  pos = flat.get("Transformer/posembed_input/pos_embedding")
  if pos is None:
    raise_unmatched(what, missing=["Transformer/posembed_input/pos_embedding"])
  check_shapes(what, flat, expected_shapes(arch, pos.shape[1] - 1),
               [k for k in flat if allow_timesformer and TIMESFORMER_EXTRAS.match(k)])
  return arch
