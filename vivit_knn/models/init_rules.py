"""How a model family's parameters start from an image ViT checkpoint (`config.init_from`).

Each family exports `INIT_RULES`; `vivit_knn.weights.init_from` applies them. Names
are the family's own: top-level modules, or modules inside one `encoderblock_i`.
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
    image_encoder: `config.model` -> `(encoder, CLS parameter)` that take the image
      ViT's `Transformer` and `cls`.
    new_modules, new_block_modules: top-level (regexes, matched in full) and block
      modules kept as initialised.
    from_spatial: `(block module, image block module)`: copies of the image block's,
      unless the checkpoint has their own.
    zeroed_block_modules: block modules set to zeros, unless the checkpoint has them.
    time_embedding: the time embedding ('' for none), interpolated over frames or zeros.
    time_encoders: `(encoder, CLS parameter)` of encoders with one position per time step.
  """

  image_encoder: Callable[[ml_collections.ConfigDict], Tuple[str, str]] = image_names
  new_modules: Tuple[str, ...] = ()
  new_block_modules: Tuple[str, ...] = ()
  from_spatial: Pairs = ()
  zeroed_block_modules: Tuple[str, ...] = ()
  time_embedding: str = ""
  time_encoders: Pairs = ()
