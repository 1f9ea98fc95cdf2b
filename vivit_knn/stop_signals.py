"""Stop signals (SIGTERM, SIGUSR1, SIGINT) from a command's start to its exit.

Cloud TPU and SLURM send SIGTERM (SLURM may send SIGUSR1 first) before taking a
machine away; a person presses Ctrl-C. What a signal does depends on the phase:

- `STARTUP` (until training's first step): nothing new to save, so the command
  stops at once with one line and exit 4.
- `DEFERRED` (the training steps and the final save): the signal is recorded; the
  trainer saves a checkpoint at the next step boundary and exits 4. A second
  Ctrl-C quits at once (exit 130).
- `SAVED` (after the final checkpoint is on disk, e.g. the end-of-run eval): the
  command stops at once with one line and exit 4.

Imports nothing heavy, so that it can be armed before TensorFlow and JAX load.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Dict, Optional

STARTUP, DEFERRED, SAVED = "startup", "deferred", "saved"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequested(BaseException):
  """A stop signal ended the command where nothing more needs saving (exit 4).

  A BaseException, like KeyboardInterrupt, so that no `except Exception` of a
  library swallows it on its way to the command line's top level.
  """


_FRESH = {"phase": STARTUP, "received": None, "saved_note": "", "unheard": None}
_state: Dict[str, Any] = dict(_FRESH)
_previous: Dict[int, object] = {}  # the handlers `install` replaced


def _name(signum: int) -> str:
  try:
    return signal.Signals(signum).name
  except ValueError:
    return f"signal {signum}"


def _handle(signum, frame):
  del frame
  if _state["phase"] == STARTUP:
    # A handler can run inside a garbage-collector callback (JAX has one), where Python
    # drops the exception it raises; `defer` raises it again.
    _state["unheard"] = (f"stopped by {_name(signum)} during start-up, before the first "
                         "training step: nothing to save")
    raise StopRequested(_state["unheard"])
  if _state["phase"] == SAVED:
    raise StopRequested(f"stopped by {_name(signum)}; {_state['saved_note']}")
  if signum == signal.SIGINT and _state["received"] is not None:
    raise KeyboardInterrupt
  if _state["received"] is None:
    print(f"stopping ({_name(signum)}): a checkpoint is saved at the end of this step "
          "(Ctrl-C again to quit without saving)", file=sys.stderr, flush=True)
  _state["received"] = signum


def install() -> bool:
  """Arms the handlers in the `STARTUP` phase; False when armed already or not the main thread."""
  if _previous or threading.current_thread() is not threading.main_thread():
    return False
  for sig in SIGNALS:
    _previous[sig] = signal.signal(sig, _handle)
  return True


def rearm() -> None:
  """Takes the signals back after a library replaced their handlers (armed ones only).

  `jax.distributed.initialize` installs the preemption notifier of JAX's coordination
  service on SIGTERM; the trainer acts on stop signals itself (`train/preemption.py`).
  """
  if _previous and threading.current_thread() is threading.main_thread():
    for sig in SIGNALS:
      signal.signal(sig, _handle)


def uninstall() -> None:
  """Puts back the handlers that were there before `install`."""
  for sig, handler in _previous.items():
    signal.signal(sig, handler)
  _previous.clear()
  _state.update(_FRESH)


def defer() -> None:
  """Enters the `DEFERRED` phase: signals are recorded for the trainer to act on.

  Raises the `StopRequested` of a start-up signal whose exception was dropped.
  """
  if _state["unheard"] is not None:
    raise StopRequested(_state["unheard"])
  _state["phase"] = DEFERRED


def saved(note: str) -> None:
  """Enters the `SAVED` phase; `note` (e.g. 'checkpoint step 30 is saved') ends the message."""
  _state.update(phase=SAVED, saved_note=note)


def received() -> Optional[int]:
  """The first stop signal recorded in the `DEFERRED` phase, or None."""
  return _state["received"]
