"""Training logs: clu's TensorBoard writer and progress report, and plain console lines.

Importing this module stays cheap: clu (which loads TensorFlow) is imported when used.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, TextIO

if TYPE_CHECKING:
  from clu import metric_writers


def open_writer(logdir: str | os.PathLike, enabled: bool = True) -> metric_writers.MetricWriter:
  """clu's TensorBoard writer for `logdir` (event file created at once); mute if not `enabled`."""
  from clu import metric_writers

  if not enabled:
    return metric_writers.MultiWriter([])
  return metric_writers.SummaryWriter(os.fspath(logdir))


def format_number(value: Any) -> str:
  """4 significant digits, or scientific notation for very small or large magnitudes."""
  number = float(value)
  if number != 0.0 and math.isfinite(number) and (abs(number) < 1e-3 or abs(number) >= 1e5):
    return f"{number:.3e}"
  return f"{number:.4g}"


def _duration(seconds: float) -> str:
  seconds = int(round(max(0.0, seconds)))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressLog:
  """Plain console lines of a training loop, each with numbers measured since the previous one.

  `first()` follows the first step, whose time is mostly compilation (a jitted call compiles
  before it returns). `line(step, metrics)` follows each log step, where the loop fetched
  results, so its step time is measured rather than dispatch time; periodic evals, run inside
  `evaluating()`, are left out of it. `end(step)` prints `trained N steps in X s (compile Y s),
  Z clips/s` on stdout. clu's `ReportProgress` (`report`) writes `steps_per_sec` and `uptime` to
  TensorBoard at the same steps. Only process 0 prints.
  """

  def __init__(self, total: int, initial: int, desc: str, clips_per_step: int,
               writer: Optional[metric_writers.MetricWriter] = None, enabled: bool = True,
               file: Optional[TextIO] = None):
    from clu import periodic_actions

    self.total, self.desc, self.enabled = total, desc, enabled
    self._initial, self._clips = initial, clips_per_step
    self._file = file or sys.stderr
    self._start = time.perf_counter()
    self._mark = (self._start, initial)
    self.compile_s: Optional[float] = None
    self.eval_s = 0.0
    # Called at log steps only: every_secs=0 reports at each call.
    self.report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                                  every_secs=0.0)
    self.report(initial)  # starts clu's clock

  def _print(self, text: str, file: Optional[TextIO] = None) -> None:
    if self.enabled:
      print(f"{self.desc}: {text}", file=file or self._file, flush=True)

  def _at(self, step: int) -> str:
    return f"step {step}/{self.total} ({100 * step / self.total:.0f}%)"

  def first(self) -> None:
    """After the first step of this command: its time, compilation included."""
    now = time.perf_counter()
    self.compile_s, self._mark = now - self._start, (now, self._initial + 1)
    self._print(f"{self._at(self._initial + 1)} {self.compile_s:.3g} s/step (the first, with "
                "compilation)")

  def line(self, step: int, metrics: Dict[str, float]) -> Dict[str, float]:
    """Prints the window's metrics and rates; returns `{step_time_s, clips_per_s}` (or {})."""
    now = time.perf_counter()
    (then, since), self._mark = self._mark, (now, step)
    self.report(step)
    parts = [self._at(step)] + [f"{k}={format_number(metrics[k])}" for k in ("loss", "top1")
                                if k in metrics]
    rates = {}
    if step > since:
      seconds = (now - then) / (step - since)
      rates = {"step_time_s": seconds, "clips_per_s": self._clips / max(seconds, 1e-9)}
      parts += [f"{seconds:.3g} s/step", f"{rates['clips_per_s']:.4g} clips/s"]
      if step < self.total:
        parts.append(f"eta {_duration((self.total - step) * seconds)}")
    self._print(" ".join(parts))
    return rates

  @contextlib.contextmanager
  def evaluating(self, step: int) -> Iterator[None]:
    """A periodic eval at `step`: left out of our rates, and a part of clu's progress report."""
    start = time.perf_counter()
    with self.report.timed("eval", wait_jax_async_dispatch=False):
      yield
    now = time.perf_counter()
    self.eval_s += now - start
    self._mark = (now, step)  # the next line's window starts after the eval

  def end(self, step: int) -> None:
    """`trained N steps in X s (compile Y s), Z clips/s` for the steps of this command."""
    now, steps = time.perf_counter(), step - self._initial
    compile_s = self.compile_s or 0.0
    timed = steps - 1 if self.compile_s is not None else steps
    seconds = now - self._start - compile_s - self.eval_s
    rate = self._clips * timed / max(seconds, 1e-9) if timed > 0 else 0.0
    evals = f", periodic evals {self.eval_s:.1f} s" if self.eval_s else ""
    self._print(f"trained {steps} steps in {now - self._start:.1f} s (compile "
                f"{compile_s:.1f} s{evals}), {rate:.4g} clips/s", file=sys.stdout)


class TenthsCounter:
  """Prints `<desc>: <n>/<total> <unit>` each time a count passes a tenth of `total`."""

  def __init__(self, total: int, desc: str, unit: str, enabled: bool = True,
               file: Optional[TextIO] = None):
    self.total, self.desc, self.unit, self.enabled = max(int(total), 1), desc, unit, enabled
    self._file, self.count = file or sys.stdout, 0

  def add(self, n: int) -> None:
    """Counts `n` more; prints when a new tenth is reached."""
    before, self.count = self.count, self.count + int(n)
    if self.enabled and self.count * 10 // self.total > before * 10 // self.total:
      print(f"{self.desc}: {self.count}/{self.total} {self.unit}", file=self._file, flush=True)
