"""Bookkeeping for videos that cannot be decoded: one error type, one tally."""

from __future__ import annotations

import threading

from absl import logging

# Why an example was skipped; the keys of ``skipped_examples()``.
CORRUPT = "corrupt"  # Unreadable container, proto or stream.
TRUNCATED = "truncated"  # Fewer frames (or bytes) than the file declares.
ZERO_FRAMES = "zero_frames"  # Readable, but holds no frame.
BAD_JPEG = "bad_jpeg"  # A stored frame image does not decode.
MISSING = "missing"  # Listed by a split file but absent on disk.
BAD_LABEL = "bad_label"  # Label outside [0, num_classes).


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

  Each example is identified by a hashable key (e.g. ``('train', 17)``) and
  counted once, however many epochs revisit it, so the totals are exact
  even though tf.data decodes ahead and in parallel. The first skip of an
  example logs a warning naming its file.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._reasons: dict[object, str] = {}

  def record(self, key: object, error: BadVideoError) -> None:
    """Counts ``key`` as skipped for ``error.reason`` (first time only)."""
    with self._lock:
      if key in self._reasons:
        return
      self._reasons[key] = error.reason
    logging.warning("Skipping video %s", error)

  def is_skipped(self, key: object) -> bool:
    """Whether ``key`` was already found bad."""
    with self._lock:
      return key in self._reasons

  def counts(self) -> dict[str, int]:
    """``{reason: number of distinct examples}`` for reasons seen so far."""
    with self._lock:
      out: dict[str, int] = {}
      for reason in self._reasons.values():
        out[reason] = out.get(reason, 0) + 1
      return dict(sorted(out.items()))
