"""The main command line with a fault injected, for the tests.

    python -m tests.faults kill_after_step=6 --config=... --workdir=...
    python -m tests.faults nan_loss_at_step=6 --config=... --workdir=...

`kill_after_step=N`: the process SIGKILLs itself right after step N (once that step's
checkpoint save, if it had one, is complete), as a hard preemption would.
`nan_loss_at_step=N`: the loss of step N (1-based) is NaN, so its gradients and update are too.
The rest of the command line goes to `vivit_knn.main` unchanged.
"""

import dataclasses
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


FAULTS = {"kill_after_step": kill_after_step, "nan_loss_at_step": nan_loss_at_step}


if __name__ == "__main__":
  from vivit_knn import cli, main

  name, step = sys.argv.pop(1).split("=")
  sys.argv[0] = "vivit_knn.main"
  cli.quiet_startup()  # as the command does, before the patched modules load the libraries
  FAULTS[name](int(step))
  main.run()
