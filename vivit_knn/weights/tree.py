"""Flat `a/b/c` views of nested parameter dicts, and the checkpoint errors."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping

import jax
import numpy as np
from flax import traverse_util

Flat = Dict[str, np.ndarray]


def flatten(tree: Mapping[str, Any]) -> Flat:
  """`{'a': {'b': x}}` -> `{'a/b': np.asarray(x)}`."""
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """Inverse of `flatten`."""
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def key_name(key_path) -> str:
  """'/'-joined names of a pytree key path (dict keys, attributes, sequence indices)."""
  return jax.tree_util.keystr(key_path, simple=True, separator="/")


def first_line(err: BaseException, width: int = 120) -> str:
  """The first line of `err`'s message (at most `width` characters), or its type's name."""
  return str(err).splitlines()[0][:width] if str(err) else type(err).__name__


class UnmatchedKeysError(ValueError):
  """A checkpoint and a parameter tree do not match; the message lists every key."""


def raise_unmatched(what: str, unknown: Iterable[str] = (), missing: Iterable[str] = (),
                    bad_shapes: Iterable[str] = ()) -> None:
  """Raises UnmatchedKeysError listing the keys when any of the lists is non-empty."""
  unknown, missing, bad_shapes = sorted(unknown), sorted(missing), list(bad_shapes)
  if not (unknown or missing or bad_shapes):
    return
  lines = [f"{what}: the checkpoint does not match."]
  for keys, title in ((unknown, "checkpoint keys with no place in the target"),
                      (missing, "target keys the checkpoint does not provide"),
                      (bad_shapes, "keys with the wrong shape")):
    if keys:
      lines.append(f"{len(keys)} {title}:")
      lines += [f"  {k}" for k in keys]
  raise UnmatchedKeysError("\n".join(lines))


class CheckpointFormatError(ValueError):
  """A file is not a checkpoint of the format it was read as (one-line message)."""
