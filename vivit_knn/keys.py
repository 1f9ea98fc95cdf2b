"""Config checks that name the field: `require`, and unknown keys with a did-you-mean hint.

Imports nothing of this package, so any layer may use it.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping, Optional


def require(cond: bool, field: str, message: str) -> None:
  """Raises `ValueError('<field>: <message>')` unless `cond` (e.g. field `'model.num_heads'`)."""
  if not cond:
    raise ValueError(f"{field}: {message}")


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
  """` (did you mean '<prefix><choice>'?)` for a misspelt `name`, or '' when none is close."""
  close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
  return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def overlay_known(section: Optional[Mapping[str, Any]], defaults: Any, field: str) -> Any:
  """Sets `section` on the ConfigDict `defaults` (in place, returned); unknown keys: ValueError."""
  if section is None:
    return defaults
  known, prefix = list(defaults.keys()), f"{field}." if field else ""
  bad = [f"{prefix}{key}{did_you_mean(key, known, prefix)}"
         for key in section.keys() if key not in known]
  if bad:
    raise ValueError(f"unknown key{'s' if len(bad) > 1 else ''} in {field or 'the config'}: "
                     + "; ".join(bad))
  for key, value in section.items():
    defaults[key] = value
  return defaults
