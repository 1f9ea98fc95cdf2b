"""The trainer's view of stop signals: act on them at a step boundary, on every process.

The handlers and their phases live in `vivit_knn.stop_signals` (armed by the
command line before anything loads). On several processes every host must stop
at the same step, so the flag is agreed on with an all-gather.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from vivit_knn import stop_signals


class PreemptionWatcher:
  """Defers stop signals to step boundaries while training; arms them until `release` if unarmed."""

  def __init__(self):
    self._owns = stop_signals.install()
    stop_signals.defer()

  def requested(self) -> bool:
    """Whether any process received a stop signal (agreed across processes)."""
    flag = stop_signals.received() is not None
    if jax.process_count() == 1:
      return flag
    flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
    return bool(np.any(flags))

  def saved(self, step: int, directory: str) -> None:
    """From now on a signal stops the command at once: step `step` is on disk."""
    stop_signals.saved(f"checkpoint step {step} is saved in {directory}: rerun to go on")

  def release(self) -> None:
    """Puts back the handlers that were there before, if this watcher armed them."""
    if self._owns:
      stop_signals.uninstall()
      self._owns = False
