"""Resume after a hard kill: N steps straight equals N/2, SIGKILL, resume to N (bitwise on CPU),
with batches prefetched to the devices."""

import signal

import numpy as np

from tests.tiny import run_python
from vivit_knn.train.checkpoint import item_path, restore_on_host

MAIN = ["-m", "vivit_knn.main"]
KILL_AFTER_6 = ["-m", "tests.faults", "kill_after_step=6"]  # the same command, SIGKILLed
ARGS = ["--config=configs/synthetic_tiny.py", "--config.train.num_train_steps=8",
        "--config.train.checkpoint_every_steps=4", "--config.train.eval_at_end=False",
        "--config.loss.mixup_alpha=0.2", "--config.model.dropout_rate=0.1",
        "--config.train.prefetch_batches=2"]


def _params(workdir, step):
  return restore_on_host(item_path(str(workdir), step))


def test_kill_and_resume_gives_bitwise_identical_params(tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  run_python(MAIN + ARGS + [f"--workdir={straight}"])

  # Killed with SIGKILL after step 6: steps 5 and 6 are lost, the step-4 checkpoint survives.
  proc = run_python(KILL_AFTER_6 + ARGS + [f"--workdir={killed}"], check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr
  assert sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]

  run_python(MAIN + ARGS + [f"--workdir={killed}"])
  a, b = _params(straight, 8), _params(killed, 8)
  leaves_a, leaves_b = _leaves(a), _leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  # and training really moved the params away from the step-4 state
  mid = _leaves(_params(straight, 4))
  assert any(not np.array_equal(x, y) for x, y in zip(mid, leaves_a))


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
