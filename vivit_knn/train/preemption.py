"""SIGTERM and Ctrl-C handling: finish the current step, save a checkpoint, exit cleanly.

Cloud TPU and SLURM send SIGTERM before taking a machine away. On several
processes every host must stop at the same step, so the flag is agreed on with
an all-gather (cheap next to a train step).
"""

from __future__ import annotations

import signal
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """Records SIGTERM, SIGUSR1 (SLURM's early warning) and SIGINT instead of dying at once.

  A second Ctrl-C (SIGINT) raises KeyboardInterrupt at once, without saving.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

  def __init__(self):
    self._flag = False
    self._previous = {}
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave default handling
        pass

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self._flag:
        raise KeyboardInterrupt
      print("stopping: saving a checkpoint at the end of this step (Ctrl-C again to quit "
            "without saving)", file=sys.stderr, flush=True)
    self._flag = True

  def requested(self) -> bool:
    """Whether any process received a stop signal (agreed across processes)."""
    if jax.process_count() == 1:
      return self._flag
    flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
    return bool(np.any(flags))

  def restore(self) -> None:
    """Puts back the signal handlers that were there before."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
