"""Training logs: clu's TensorBoard writer, and console progress (a bar, or plain lines).

Importing this module stays cheap: clu's writers (which load TensorFlow) are
imported when one is opened.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Optional, TextIO

if TYPE_CHECKING:
  from clu import metric_writers


def open_writer(logdir: str | os.PathLike, enabled: bool = True) -> metric_writers.MetricWriter:
  """clu's TensorBoard writer for `logdir` (event file created at once); mute if not `enabled`."""
  from clu import metric_writers

  if not enabled:
    return metric_writers.MultiWriter([])
  return metric_writers.SummaryWriter(os.fspath(logdir))


def _format_postfix(value: Any) -> str:
  if isinstance(value, str):
    return value
  try:
    number = float(value)
  except (TypeError, ValueError):
    return str(value)
  if number != 0.0 and math.isfinite(number) and (abs(number) < 1e-3 or abs(number) >= 1e5):
    return f"{number:.3e}"
  return f"{number:.4g}"


def _format_duration(seconds: float) -> str:
  seconds = int(round(max(0.0, seconds)))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _is_terminal(stream: TextIO) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # no isatty, or a closed stream
    return False


class ProgressBar:
  """Console progress of a loop: a ``tqdm`` bar on a terminal, plain lines otherwise.

  In a file or pipe (a batch job's log) it prints a plain line after the first count (its
  time includes compilation), at every tenth of ``total``, at least every ``log_every_s``
  seconds, and at the end, e.g.::

    synthetic_dk: step 40/200 (20%) loss=1.414 top1=0.19 0.31 s/step 206 clips/s eta 0:00:50

  ``interactive`` (default: whether ``file``, default stderr, is a terminal) forces either.
  Step time (and clips/s with ``clips_per_step``) is measured over the last ``window``
  counts, also with ``enabled=False``, which prints nothing (processes other than 0).
  """

  def __init__(self, total: Optional[int], initial: int = 0, desc: Optional[str] = None,
               enabled: bool = True, *, unit: str = "step", file: Optional[TextIO] = None,
               clips_per_step: Optional[int] = None, interactive: Optional[bool] = None,
               log_every_s: float = 60.0, window: int = 50):
    self.enabled = bool(enabled)
    self.total, self.desc, self.unit = total, desc, unit
    self._file = file if file is not None else sys.stderr
    interactive = _is_terminal(self._file) if interactive is None else interactive
    self._clips_per_step = clips_per_step
    self._log_every_s = float(log_every_s)
    self._n = self._initial = int(initial)
    self._postfix: dict[str, str] = {}
    # (time, count) of the latest synchronised updates from the end of the first (compiled) one.
    self._marks: collections.deque = collections.deque(maxlen=max(1, int(window)) + 1)
    self._first_step_s: Optional[float] = None
    self._last_line_time = self._created = time.perf_counter()
    self._last_line_n = self._n
    self._closed, self._bar = False, None
    if self.enabled and interactive:
      from tqdm import tqdm

      self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                       dynamic_ncols=True, file=self._file)

  def update(self, n: int = 1, *, synced: bool = True, **postfix: Any) -> None:
    """Advances by ``n`` and shows ``postfix`` (e.g. ``loss=..., lr=...``).

    ``synced=False``: the loop has not waited for this count's work (asynchronous dispatch),
    so its time is no measurement; rates are taken between synchronised updates only.
    """
    now = time.perf_counter()
    first = self._first_step_s is None
    if first:
      self._first_step_s = now - self._created
    self._n += n
    if first or synced:  # the first count's end (after compilation) starts the measurement
      self._marks.append((now, self._n))
    if postfix:
      self._postfix = {k: _format_postfix(v) for k, v in postfix.items()}
    if not self.enabled:
      return
    if self._bar is not None:
      shown = dict(self._postfix)
      clips = self.rates().get("clips_per_s")
      if clips is not None:
        shown["clips/s"] = _format_postfix(clips)
      if shown:
        self._bar.set_postfix(shown, refresh=False)
      self._bar.update(n)
    elif self._line_due(now):
      self._print_line(now)

  def rates(self) -> dict[str, float]:
    """``{"step_time_s", "clips_per_s"}`` over the recent window; ``{}`` until measured.

    Only synchronised updates are timed (with asynchronous dispatch only their totals are the
    true throughput); the first update (compilation) only starts the measurement.
    """
    if len(self._marks) < 2:
      return {}
    (t0, n0), (t1, n1) = self._marks[0], self._marks[-1]
    if n1 <= n0:
      return {}
    step_time = (t1 - t0) / (n1 - n0)
    out = {"step_time_s": step_time}
    if self._clips_per_step:
      out["clips_per_s"] = self._clips_per_step / step_time if step_time > 0 else math.inf
    return out

  def _line_due(self, now: float) -> bool:
    if self._last_line_n == self._initial or (self.total and self._n >= self.total):
      # The first count (its time includes compilation), or done.
      return True
    if self.total and self.total > 0:
      tenth = self.total / 10
      if int(self._n / tenth) > int(self._last_line_n / tenth):
        return True
    return now - self._last_line_time >= self._log_every_s

  def _line(self) -> str:
    """The plain progress line for the current count (what a log file gets)."""
    parts = [f"{self.desc}:"] if self.desc else []
    parts.append(f"{self.unit} {self._n}" + (
        f"/{self.total} ({100 * self._n / self.total:.0f}%)" if self.total else ""))
    parts.extend(f"{k}={v}" for k, v in self._postfix.items())
    rates = self.rates()
    if not rates and self._first_step_s is not None and self._n - self._initial <= 1:
      parts.append(f"{self._first_step_s:.3g} s/{self.unit} (the first, with compilation)")
    if rates:
      parts.append(f"{rates['step_time_s']:.3g} s/{self.unit}")
      if "clips_per_s" in rates:
        parts.append(f"{rates['clips_per_s']:.4g} clips/s")
      if self.total and self._n < self.total:
        parts.append(f"eta {_format_duration((self.total - self._n) * rates['step_time_s'])}")
    return " ".join(parts)

  def _print_line(self, now: float) -> None:
    print(self._line(), file=self._file, flush=True)
    self._last_line_time, self._last_line_n = now, self._n

  def close(self) -> None:
    """Closes the bar; plain lines end with the count reached, if not yet printed."""
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._bar.close()
    elif self.enabled and self._n != self._last_line_n:
      self._print_line(time.perf_counter())

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()
