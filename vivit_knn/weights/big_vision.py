"""big_vision ViT `.npz` checkpoints -> our image ViT tree.

big_vision keeps the position embedding at the top level (`pos_embedding`,
patches only) and adds it before prepending the CLS (`cls`); our tree adds it
after, so a zero CLS row is prepended, which gives the same function. Models
trained with `scan=True` stack the blocks over layers in one
`Transformer/encoderblock/...`; those are split. Only CLS-token models
(`pool_type='tok'`) map onto ours; a `gap` or `map` model is rejected.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from vivit_knn.weights import npz
from vivit_knn.weights.image_vit import check_image_tree
from vivit_knn.weights.tree import Flat, raise_unmatched, unflatten

_SCANNED = "Transformer/encoderblock/"


def _unscan(flat: Mapping[str, np.ndarray]) -> Flat:
  out = {}
  for key, value in flat.items():
    if key.startswith(_SCANNED):
      rest = key[len(_SCANNED):]
      for layer in range(value.shape[0]):
        out[f"Transformer/encoderblock_{layer}/{rest}"] = value[layer]
    else:
      out[key] = value
  return out


def convert_big_vision(flat: Mapping[str, np.ndarray]) -> dict:
  """big_vision flat params (a `params/` or `params/img/` prefix stripped) -> our image ViT tree."""
  flat = _unscan(npz.strip_prefix(flat, "big_vision_npz"))
  if "cls" not in flat:
    raise_unmatched("big_vision_npz (a model without a CLS token: pool_type must be 'tok')",
                    unknown=[k for k in flat if k.startswith("MAPHead")], missing=["cls"])
  if "pos_embedding" not in flat:
    raise_unmatched("big_vision_npz (learned position embeddings needed)",
                    missing=["pos_embedding"])
  pos = flat.pop("pos_embedding")
  flat["Transformer/posembed_input/pos_embedding"] = np.concatenate(
      [np.zeros_like(pos[:, :1]), pos], axis=1)
  tree = unflatten(flat)
  check_image_tree(tree, "big_vision_npz", allow_timesformer=False)
  return tree
