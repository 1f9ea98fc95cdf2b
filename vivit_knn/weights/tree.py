"""Flat `a/b/c` views of nested parameter dicts, and the unmatched-keys error."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping

import numpy as np

Flat = Dict[str, np.ndarray]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Flat:
  """`{'a': {'b': x}}` -> `{'a/b': np.asarray(x)}`."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, path + "/"))
    else:
      flat[path] = np.asarray(value)
  return flat


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """Inverse of `flatten`."""
  tree: Dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def key_name(key_path) -> str:
  """'/'-joined names of a pytree key path (dict keys, attributes, sequence indices)."""
  parts = []
  for k in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


class UnmatchedKeysError(ValueError):
  """A checkpoint and a parameter tree do not match; the message lists every key."""


def raise_unmatched(what: str, unknown: Iterable[str] = (), missing: Iterable[str] = (),
                    bad_shapes: Iterable[str] = ()) -> None:
  """Raises UnmatchedKeysError listing the keys when any of the lists is non-empty.

  `unknown`: source keys nothing maps; `missing`: target keys no source fills;
  `bad_shapes`: `'key: got (..), want (..)'` lines.
  """
  unknown, missing, bad_shapes = sorted(unknown), sorted(missing), list(bad_shapes)
  if not (unknown or missing or bad_shapes):
    return
  lines = [f"{what}: the checkpoint does not match."]
  if unknown:
    lines.append(f"{len(unknown)} checkpoint keys with no place in the target:")
    lines += [f"  {k}" for k in unknown]
  if missing:
    lines.append(f"{len(missing)} target keys the checkpoint does not provide:")
    lines += [f"  {k}" for k in missing]
  if bad_shapes:
    lines.append(f"{len(bad_shapes)} keys with the wrong shape:")
    lines += [f"  {k}" for k in bad_shapes]
  raise UnmatchedKeysError("\n".join(lines))


class CheckpointFormatError(ValueError):
  """A file is not a checkpoint of the format it was read as (one-line message)."""
