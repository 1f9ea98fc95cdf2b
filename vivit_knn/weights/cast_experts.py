"""Converted CLIP / VideoMAE expert trees placed under a CAST model's `spatial` / `temporal`."""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

import numpy as np

from vivit_knn.models.cast import TRAINABLE_PATTERNS
from vivit_knn.weights.tree import flatten, raise_unmatched, unflatten


def merge_expert_params(params: Mapping[str, Any], spatial: Optional[Mapping[str, Any]] = None,
                        temporal: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """A new copy of `params` (numpy, its dtypes) with the given expert trees placed in it.

  Every leaf of a given expert tree must exist in `params` with the same shape,
  and every frozen leaf of that expert (one no `TRAINABLE_PATTERNS` entry matches)
  must be given; trainable leaves not given (adapters, a missing `fc_norm`) keep
  their values.
  """
  flat = flatten(params)
  unknown, missing, bad = [], [], []
  for prefix, tree in (("spatial", spatial), ("temporal", temporal)):
    if tree is None:
      continue
    given = {f"{prefix}/{key}": value for key, value in flatten(tree).items()}
    for path, value in given.items():
      if path not in flat:
        unknown.append(path)
      elif flat[path].shape != value.shape:
        bad.append(f"{path}: got {value.shape}, want {flat[path].shape}")
      else:
        flat[path] = np.asarray(value, flat[path].dtype)
    missing += [path for path in flat if path.startswith(prefix + "/") and path not in given
                and not any(re.search(pattern, path) for pattern in TRAINABLE_PATTERNS)]
  raise_unmatched("CAST experts", unknown=unknown, missing=missing, bad_shapes=bad)
  return unflatten(flat)
