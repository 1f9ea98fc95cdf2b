"""Advice that works after training stopped on a non-finite loss.

A too high learning rate can make the parameters grow for many steps before anything
overflows, so the newest kept checkpoint may hold values around 1e29, beyond recovery. The
advice names the newest kept checkpoint with sane parameters and the flags that go back to
it with a lower learning rate and clipping (`run_config.RESUMABLE_OPTIMIZER_FIELDS`).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import jax
import ml_collections
import numpy as np

from vivit_knn.train.checkpoint import Checkpointer, item_path, restore_on_host

# Any |parameter| above this marks a checkpoint as already exploding.
SANE_LIMIT = 1e6


def max_abs_param(workdir: str, step: int) -> float:
  """The largest |value| among the parameters of checkpoint `step` (inf if any is not finite)."""
  tree = restore_on_host(item_path(workdir, step))
  params = tree.get("params", tree) if isinstance(tree, dict) else tree
  largest = 0.0
  for leaf in jax.tree.leaves(params):
    values = np.abs(np.asarray(leaf, np.float64))
    if values.size:
      if not np.all(np.isfinite(values)):
        return float("inf")
      largest = max(largest, float(values.max()))
  return largest


def _sane_step(workdir: str, steps: List[int]) -> Tuple[Optional[int], List[Tuple[int, float]]]:
  """The newest kept step with sane parameters, and the (step, max |param|) looked at."""
  seen = []
  for step in sorted(steps, reverse=True):
    largest = max_abs_param(workdir, step)
    seen.append((step, largest))
    if largest <= SANE_LIMIT:
      return step, seen
  return None, seen


def _suggested_flags(optimizer: ml_collections.ConfigDict) -> Tuple[str, str]:
  """`(flags, their current values)`: a tenth of the learning rate, and clipping at 1 if off."""
  lr = float(optimizer.base_learning_rate)
  clip = optimizer.grad_clip_norm
  flags = [f"--config.optimizer.base_learning_rate={lr / 10:g}"]
  now = [f"base_learning_rate {lr:g}"]
  if clip is None or clip <= 0:
    flags.append("--config.optimizer.grad_clip_norm=1")
    now.append("grad_clip_norm off")
  return " ".join(flags), ", ".join(now)


def nonfinite_advice(workdir: str, ckpt: Checkpointer,
                     optimizer: ml_collections.ConfigDict) -> str:
  """Sentences saying which checkpoint of `ckpt` (saves done) to go on from, with which flags."""
  flags, now = _suggested_flags(optimizer)
  steps = ckpt.all_steps()
  if not steps:
    return (f"No checkpoint was saved: start again with {flags} (now {now}), or in another "
            "--workdir")
  sane, seen = _sane_step(workdir, steps)
  newest, newest_max = seen[0]
  if sane == newest:
    return (f"The newest checkpoint (step {newest}, parameters up to {newest_max:.3g}) is "
            f"kept in {ckpt.directory}: rerun the same command with {flags} (now {now}) "
            "to go on from it")
  exploding = (f"The newest checkpoint (step {newest}) already holds parameters up to "
               f"{newest_max:.3g} (over {SANE_LIMIT:.0e}), so resuming from it cannot recover")
  if sane is None:
    return (f"{exploding}, and so does every kept step ({', '.join(str(s) for s, _ in seen)}): "
            f"train a new run in another --workdir with {flags} (now {now})")
  return (f"{exploding}. Step {sane} is the newest sane one (parameters up to "
          f"{seen[-1][1]:.3g}): rerun the same command with --restart_from_step={sane} "
          f"{flags} (now {now}); the newer steps are moved to checkpoints_superseded/")
