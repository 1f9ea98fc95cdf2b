"""Config sections over their defaults: unknown keys are errors with a did-you-mean hint.

One helper for every place that overlays a user's section (a mapping or an
`ml_collections.ConfigDict`) on the defaults of that section, and `require`, the
one way a check names the field it rejects. It imports nothing of this package,
so any layer may use it.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, List, Mapping, Optional


def require(cond: bool, field: str, message: str) -> None:
  """Raises `ValueError('<field>: <message>')` unless `cond`.

  Args:
    cond: whether the value is acceptable.
    field: the config field, e.g. `'model.num_heads'`.
    message: what is wrong, with the value.
  """
  if not cond:
    raise ValueError(f"{field}: {message}")


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
  """A hint for a misspelt `name`: ` (did you mean '<prefix><choice>'?)`, or '' if none is close.

  Args:
    name: the key or value that was not recognised.
    choices: the names that would have been recognised.
    prefix: put before the suggestion, e.g. `'optimizer.'` to name the full field.

  Returns:
    The hint, starting with a space, or an empty string.
  """
  close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
  return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def unknown_keys(section: Mapping[str, Any], known: Iterable[str], prefix: str = "") -> List[str]:
  """The keys of `section` that `known` lacks, each as `<prefix><key>` with a did-you-mean hint.

  Args:
    section: the user's mapping (a dict or a ConfigDict).
    known: the keys the defaults define.
    prefix: the section's path with a trailing dot, e.g. `'optimizer.'`.

  Returns:
    One entry per unknown key, in the section's order; empty when all are known.
  """
  known = list(known)
  return [f"{prefix}{key}{did_you_mean(key, known, prefix)}"
          for key in section.keys() if key not in known]


def check_known(section: Mapping[str, Any], known: Iterable[str], field: str) -> None:
  """Raises ValueError naming every key of `section` that `known` lacks.

  Args:
    section: the user's mapping.
    known: the keys the defaults define.
    field: the section's name in messages, e.g. `'optimizer'`.

  Raises:
    ValueError: `unknown key(s) in <field>: <field>.<key> (did you mean ...?); ...`.
  """
  bad = unknown_keys(section, known, f"{field}." if field else "")
  if bad:
    raise ValueError(f"unknown key{'s' if len(bad) > 1 else ''} in {field or 'the config'}: "
                     + "; ".join(bad))


def merge_known(section: Optional[Mapping[str, Any]], defaults: Mapping[str, Any],
                field: str) -> dict:
  """`defaults` with the values of `section` over them; a key the defaults lack is an error.

  Args:
    section: the user's mapping, or None for the defaults alone.
    defaults: every known key with its default value (not modified).
    field: the section's name in messages, e.g. `'optimizer'`.

  Returns:
    A new plain dict (a ConfigDict default or section is converted with `to_dict`).

  Raises:
    ValueError: naming each unknown `<field>.<key>`, with a did-you-mean hint.
  """
  merged = _as_dict(defaults)
  if section is None:
    return merged
  given = _as_dict(section)
  check_known(given, merged, field)
  merged.update(given)
  return merged


def overlay_known(section: Optional[Mapping[str, Any]], defaults: Any, field: str) -> Any:
  """Sets the values of `section` on `defaults` (a ConfigDict, changed in place) and returns it.

  Raises:
    ValueError: naming each key of `section` that `defaults` lacks, with a hint.
  """
  if section is None:
    return defaults
  check_known(section, defaults.keys(), field)
  for key, value in section.items():
    defaults[key] = value
  return defaults


def _as_dict(mapping: Mapping[str, Any]) -> dict:
  to_dict = getattr(mapping, "to_dict", None)
  return dict(to_dict()) if callable(to_dict) else dict(mapping)
