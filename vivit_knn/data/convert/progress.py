"""Progress of a conversion: a live bar on a terminal, plain lines in a log file.

A bar's carriage returns pile up into one endless line when stderr is a file
or a pipe (a batch job's log), so there the progress is a plain line at every
tenth of the videos and at least every ``every_s`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

import tqdm


def _is_terminal(stream: TextIO) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False


class Progress:
  """Counts converted videos; use as a context manager, call it with each count done."""

  def __init__(self, total: int, enabled: bool = True, *, file: Optional[TextIO] = None,
               every_s: float = 30.0):
    """Progress of ``total`` videos on ``file`` (stderr); ``every_s``: longest gap between lines."""
    self.total, self.enabled, self.done, self.resumed = total, enabled, 0, 0
    self._file = file if file is not None else sys.stderr
    self._every_s = every_s
    self._start = self._last_time = time.perf_counter()
    self._last_done = 0
    self._bar = (tqdm.tqdm(total=total, unit="video", file=self._file)
                 if enabled and _is_terminal(self._file) else None)

  def resume(self, count: int) -> None:
    """Adds ``count`` videos of shards kept from an earlier run."""
    self.resumed += count
    self(count)

  def __call__(self, count: int) -> None:
    """Adds ``count`` finished videos."""
    self.done += count
    if self._bar is not None:
      self._bar.update(count)
      return
    now = time.perf_counter()
    tenth = max(self.total, 1) / 10
    if self.enabled and (self.done >= self.total or
                         int(self.done / tenth) > int(self._last_done / tenth) or
                         now - self._last_time >= self._every_s):
      self._line(now)

  def _line(self, now: float) -> None:
    percent = 100 * self.done / max(self.total, 1)
    rate = (self.done - self.resumed) / max(now - self._start, 1e-9)
    kept = f", {self.resumed} kept from an earlier run" if self.resumed else ""
    print(f"converted {self.done}/{self.total} videos ({percent:.0f}%{kept}), {rate:.3g} "
          "videos/s", file=self._file, flush=True)
    self._last_time, self._last_done = now, self.done

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc_info) -> None:
    if self._bar is not None:
      self._bar.close()
