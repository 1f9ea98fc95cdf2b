"""The main command line with a fault injected, for the tests.

    python -m tests.faults kill_after_step=6 --config=... --workdir=...
    python -m tests.faults nan_loss_at_step=6 --config=... --workdir=...

`kill_after_step=N`: the process SIGKILLs itself right after step N (once that step's
checkpoint save, if it had one, is complete), as a hard preemption would.
`nan_loss_at_step=N`: the loss of step N (1-based) is NaN, so its gradients and update are too.
`storage_error_reading_step=N`: every read of checkpoint step N fails with EIO, as a failing
disk or bucket does. `memory_error_reading_step=N`: reading it raises MemoryError.
The rest of the command line goes to `vivit_knn.main` unchanged.
"""

import dataclasses
import errno
import os
import signal
import sys

import jax.numpy as jnp


def kill_after_step(n):
  from vivit_knn.train import checkpoint

  save = checkpoint.Checkpointer.save

  def save_then_die(self, step, state, *, force=False):
    started = save(self, step, state, force=force)
    if step == n:
      self.wait()
      os.kill(os.getpid(), signal.SIGKILL)
    return started

  checkpoint.Checkpointer.save = save_then_die


class _NanLossAt:
  """An objective whose loss is NaN at step `n`; otherwise the wrapped one."""

  def __init__(self, objective, n):
    self._objective, self._n = objective, n

  def __getattr__(self, name):
    return getattr(self._objective, name)

  def __call__(self, *args, step, **kwargs):
    loss, terms = self._objective(*args, step=step, **kwargs)
    return jnp.where(step + 1 == self._n, jnp.nan, loss), terms


def nan_loss_at_step(n):
  from vivit_knn.train import steps

  make_train_step = steps.make_train_step

  def make_poisoned_step(exp, *args, **kwargs):
    exp = dataclasses.replace(exp, objective=_NanLossAt(exp.objective, n))
    return make_train_step(exp, *args, **kwargs)

  steps.make_train_step = make_poisoned_step


def _failing_restore(n, error):
  import orbax.checkpoint as ocp

  restore = ocp.CheckpointManager.restore

  def failing(self, step, *args, **kwargs):
    if step == n:
      raise error
    return restore(self, step, *args, **kwargs)

  ocp.CheckpointManager.restore = failing


def storage_error_reading_step(n):
  _failing_restore(n, OSError(errno.EIO, "Input/output error", f"checkpoints/{n}/default"))


def memory_error_reading_step(n):
  _failing_restore(n, MemoryError(f"reading checkpoint step {n}"))


FAULTS = {"kill_after_step": kill_after_step, "nan_loss_at_step": nan_loss_at_step,
          "storage_error_reading_step": storage_error_reading_step,
          "memory_error_reading_step": memory_error_reading_step}


if __name__ == "__main__":
  from vivit_knn import cli, main

  name, step = sys.argv.pop(1).split("=")
  sys.argv[0] = "vivit_knn.main"
  cli.quiet_startup()  # as the command does, before the patched modules load the libraries
  FAULTS[name](int(step))
  main.run()
