"""How a model family's parameters start from an image ViT checkpoint (`config.init_from`).

Each family module exports `INIT_RULES`, held by its `ModelFamily` entry;
`vivit_knn.weights.init_from` applies them and names no family itself. Module
names are the family's own: top-level ones, or those inside one `encoderblock_i`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Tuple

import ml_collections

Pairs = Tuple[Tuple[str, str], ...]


def image_names(cfg: ml_collections.ConfigDict) -> Tuple[str, str]:
  """The image ViT's own encoder and CLS names, for a model that keeps them."""
  del cfg
  return "Transformer", "cls"


@dataclasses.dataclass(frozen=True)
class InitRules:
  """One family's initialisation from an image ViT.

  Attributes:
    image_encoder: `config.model` -> `(encoder, CLS parameter)` of the model that take
      the image ViT's `Transformer` and `cls`.
    new_modules: top-level modules (regexes, matched in full) kept as initialised.
    new_block_modules: block modules kept as initialised.
    from_spatial: `(block module, image block module)` pairs: the module starts as a
      copy of the image block's, unless the checkpoint has weights of its own for it.
    zeroed_block_modules: block modules set to zeros, unless the checkpoint has them.
    time_embedding: the encoder's time embedding ('' for none): the checkpoint's,
      interpolated over frames, or zeros from an image model.
    time_encoders: `(encoder, CLS parameter)` pairs of encoders whose position
      embedding has one row per time step (a video checkpoint's is interpolated
      over time).
  """

  image_encoder: Callable[[ml_collections.ConfigDict], Tuple[str, str]] = image_names
  new_modules: Tuple[str, ...] = ()
  new_block_modules: Tuple[str, ...] = ()
  from_spatial: Pairs = ()
  zeroed_block_modules: Tuple[str, ...] = ()
  time_embedding: str = ""
  time_encoders: Pairs = ()
