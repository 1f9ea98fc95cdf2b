"""Original ViT `.npz` checkpoints (google-research/vision_transformer) -> our image ViT tree.

Keys are our image tree's (`image_vit`). Checkpoints saved before Flax linen
number a block's modules globally (`LayerNorm_0`, `MultiHeadDotProductAttention_1`,
`LayerNorm_2`, `MlpBlock_3`), linen per type (`LayerNorm_0`,
`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`); both are accepted.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping

import numpy as np

from vivit_knn.weights import npz
from vivit_knn.weights.image_vit import check_image_tree
from vivit_knn.weights.tree import Flat, unflatten

_BLOCK_MODULE = re.compile(r"^(Transformer/encoderblock_\d+)/([A-Za-z]+)_(\d+)/(.*)$")


def renumber_block_modules(flat: Mapping[str, np.ndarray]) -> Flat:
  """Renumbers `<Type>_<i>` inside each encoder block per type, in index order."""
  indices: Dict[tuple, set] = {}
  for key in flat:
    m = _BLOCK_MODULE.match(key)
    if m:
      indices.setdefault((m.group(1), m.group(2)), set()).add(int(m.group(3)))
  rank = {key: {i: r for r, i in enumerate(sorted(found))} for key, found in indices.items()}
  out = {}
  for key, value in flat.items():
    m = _BLOCK_MODULE.match(key)
    if m:
      block, kind, index, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
      key = f"{block}/{kind}_{rank[(block, kind)][index]}/{rest}"
    out[key] = value
  return out


def convert_vit_npz(flat: Mapping[str, np.ndarray]) -> dict:
  """Original-ViT flat params (a prefix like `opt/target/` stripped) -> our image ViT tree."""
  flat = npz.strip_prefix(flat, "vit_npz")
  tree = unflatten(renumber_block_modules(flat))
  check_image_tree(tree, "vit_npz", allow_timesformer=False)
  return tree
