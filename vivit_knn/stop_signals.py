"""Stop signals (SIGTERM, SIGUSR1, SIGINT) from a command's start to its exit.

Cloud TPU and SLURM send SIGTERM (SLURM may send SIGUSR1 first) before taking a
machine away; a person presses Ctrl-C. What a signal does depends on the phase
the command is in:

- `STARTUP` (from the first line of `main` until training's first step): there
  is nothing new to save, so the command stops at once with one line and exit 4.
- `DEFERRED` (the training steps and the final save): the signal is recorded;
  the trainer saves a checkpoint at the next step boundary (or finishes the
  save under way) and exits 4. A second Ctrl-C quits at once (exit 130).
- `SAVED` (after the final checkpoint is on disk, e.g. the end-of-run eval):
  the command stops at once with one line and exit 4; the checkpoint is kept.

Imports nothing heavy, so that it can be armed before TensorFlow and JAX load.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Dict, Optional

STARTUP, DEFERRED, SAVED = "startup", "deferred", "saved"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequested(BaseException):
  """A stop signal ended the command where nothing more needs saving (exit 4).

  A BaseException, like KeyboardInterrupt, so that no `except Exception` of a
  library swallows it on its way to the command line's top level.
  """


def _name(signum: int) -> str:
  try:
    return signal.Signals(signum).name
  except ValueError:
    return f"signal {signum}"


class _Stops:
  """The process's handlers and what they have seen (one instance, `_STOPS`)."""

  def __init__(self):
    self.phase = STARTUP
    self.received: Optional[int] = None
    self.saved_note = ""
    self._previous: Dict[int, object] = {}

  @property
  def installed(self) -> bool:
    return bool(self._previous)

  def install(self) -> bool:
    if self.installed or threading.current_thread() is not threading.main_thread():
      return False
    for sig in SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return True

  def uninstall(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
    self.phase, self.received, self.saved_note = STARTUP, None, ""

  def _handle(self, signum, frame):
    del frame
    if self.phase == STARTUP:
      raise StopRequested(f"stopped by {_name(signum)} during start-up, before the first "
                          "training step: nothing to save")
    if self.phase == SAVED:
      raise StopRequested(f"stopped by {_name(signum)}; {self.saved_note}")
    if signum == signal.SIGINT and self.received is not None:
      raise KeyboardInterrupt
    if self.received is None:
      print(f"stopping ({_name(signum)}): a checkpoint is saved at the end of this step "
            "(Ctrl-C again to quit without saving)", file=sys.stderr, flush=True)
    self.received = signum


_STOPS = _Stops()


def install() -> bool:
  """Arms the handlers in the `STARTUP` phase; False when they were armed already.

  Only the main thread can set signal handlers; elsewhere this does nothing.
  """
  return _STOPS.install()


def uninstall() -> None:
  """Puts back the handlers that were there before `install`."""
  _STOPS.uninstall()


def installed() -> bool:
  """Whether the handlers are armed."""
  return _STOPS.installed


def defer() -> None:
  """Enters the `DEFERRED` phase: signals are recorded for the trainer to act on."""
  _STOPS.phase = DEFERRED


def saved(note: str) -> None:
  """Enters the `SAVED` phase; `note` (e.g. 'checkpoint step 30 is saved') ends the message."""
  _STOPS.phase, _STOPS.saved_note = SAVED, note


def received() -> Optional[int]:
  """The first stop signal recorded in the `DEFERRED` phase, or None."""
  return _STOPS.received
