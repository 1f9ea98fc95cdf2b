"""Bookkeeping for videos that cannot be decoded: one error type, one tally."""

from __future__ import annotations

import collections
import threading

from absl import logging

# Why an example was skipped; the keys of ``skipped_examples()``.
CORRUPT = "corrupt"  # Unreadable container, proto or stream.
TRUNCATED = "truncated"  # Fewer frames (or bytes) than the file declares.
ZERO_FRAMES = "zero_frames"  # Readable, but holds no frame.
BAD_JPEG = "bad_jpeg"  # A stored frame image does not decode.
MISSING = "missing"  # Listed by a split file but absent on disk.
BAD_LABEL = "bad_label"  # Label outside [0, num_classes).

# Second item of a ``(split, kind, location)`` key for examples found bad
# while listing a split, before any decoding.
LISTING_MISSING = "missing"  # A listed file that is absent.
LISTING_FILE = "file"  # A record file damaged after some records.


class BadVideoError(Exception):
  """A video (file or record) that cannot provide frames.

  Attributes:
    reason: One of the reason constants of this module.
    source: File name or record location, for messages.
    detail: What went wrong, for messages ('' if the reason says it all).
  """

  def __init__(self, reason: str, source: str, detail: str = ""):
    self.reason = reason
    self.source = source
    self.detail = detail
    message = f"{source}: {reason.replace('_', ' ')}"
    super().__init__(message + (f" ({detail})" if detail else ""))


class SkipCounter:
  """Thread-safe tally of distinct skipped examples, by reason.

  An example, a hashable key (e.g. ``('train', 17)``, a tuple whose first item
  names its split), is counted and logged once however often tf.data revisits it.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._reasons: dict[object, str] = {}
    self._messages: dict[object, str] = {}

  def record(self, key: object, error: BadVideoError) -> None:
    """Counts ``key`` as skipped for ``error.reason`` (first time only)."""
    with self._lock:
      if key in self._reasons:
        return
      self._reasons[key] = error.reason
      self._messages[key] = str(error)
    logging.warning("Skipping video %s", error)

  def _split_keys(self, split: str, kind: str | None = None) -> list:
    """Keys attributed to ``split`` (optionally only ``(split, kind, ...)``)."""
    return [k for k in self._reasons if isinstance(k, tuple) and k and k[0] == split
            and (kind is None or (len(k) > 1 and k[1] == kind))]

  def split_count(self, split: str, kind: str | None = None) -> int:
    """Distinct skipped examples of ``split`` (``kind`` narrows the keys)."""
    with self._lock:
      return len(self._split_keys(split, kind))

  def split_sources(self, split: str) -> list[str]:
    """One line per skipped example of ``split``: where it is and why, sorted."""
    with self._lock:
      return sorted(self._messages[k] for k in self._split_keys(split))

  def is_skipped(self, key: object) -> bool:
    """Whether ``key`` was already found bad."""
    with self._lock:
      return key in self._reasons

  def counts(self) -> dict[str, int]:
    """``{reason: number of distinct examples}`` for reasons seen so far."""
    with self._lock:
      return dict(sorted(collections.Counter(self._reasons.values()).items()))
