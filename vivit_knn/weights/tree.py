"""Flat `a/b/c` views of nested parameter dicts, and the checkpoint errors."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Iterable, Mapping, Optional

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
  """A checkpoint and a parameter tree do not match; the message names a file of every key."""


def raise_unmatched(what: str, unknown: Iterable[str] = (), missing: Iterable[str] = (),
                    bad_shapes: Iterable[str] = (), trees: Optional[Mapping[str, Flat]] = None):
  """Raises UnmatchedKeysError when any list is non-empty: two lines, every key in a file.

  The message gives each list's count and first key, and the path of a text file
  listing every key and every array of `trees` (e.g. checkpoint and model) with its
  shape. The file goes to the temp folder: callers include the converters and
  evaluations of read-only runs, which have no workdir to write to.
  """
  sections = [(keys, title) for keys, title in (
      (sorted(unknown), "checkpoint keys with no place in the target"),
      (sorted(missing), "target keys the checkpoint does not provide"),
      (list(bad_shapes), "keys with the wrong shape")) if keys]
  if not sections:
    return
  firsts = "; ".join(f"{len(keys)} {title} (first: {keys[0]})" for keys, title in sections)
  sections += [([f"{k} {tuple(v.shape)}" for k, v in sorted(flat.items())],
                f"arrays of the {name}") for name, flat in (trees or {}).items()]
  fd, path = tempfile.mkstemp(prefix="unmatched_keys_", suffix=".txt")
  with os.fdopen(fd, "w") as f:
    f.write("".join(f"{len(keys)} {title}:\n" + "".join(f"  {k}\n" for k in keys)
                    for keys, title in sections))
  raise UnmatchedKeysError(f"{what}: the checkpoint does not match: {firsts}\n"
                           f"  every key and array shape: {path}")


def check_shapes(what: str, got: Mapping[str, Any], want: Mapping[str, Any],
                 extras: Iterable[str] = ()) -> None:
  """UnmatchedKeysError unless flat `got` has `want`'s keys (plus `extras`) and leaf shapes."""
  bad = [f"{k}: got {tuple(got[k].shape)}, want {tuple(want[k].shape)}"
         for k in sorted(set(got) & set(want)) if tuple(got[k].shape) != tuple(want[k].shape)]
  raise_unmatched(what, set(got) - set(want) - set(extras), set(want) - set(got), bad,
                  {"checkpoint": got, "model": want})


class CheckpointFormatError(ValueError):
  """A file is not a checkpoint of the format it was read as (one-line message)."""
