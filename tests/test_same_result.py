"""Same command, same result: a run's checkpoints do not depend on the machine's load.

A tiny k-NN teacher and a student distilled from it (stage 2: `alpha*CE +
(1-alpha)*KL` against the teacher restored from its run) are each trained twice
through `python -m vivit_knn.main`: once on an idle machine and once while one
busy-loop process per usable core keeps every core busy. Every checkpoint of the
second run must equal the first bit for bit. Load changes the timing of
everything asynchronous (tf.data's parallel decoding and prefetching, Orbax's
background saves while the next steps already run, the teacher's restore, XLA's
thread pool), so a result that depends on timing shows up here.

Note: XLA on CPU splits large reductions by the size of its thread pool, which
is the number of cores the process may use when it starts. Runs are therefore
bitwise reproducible for a given core count, under any load, but not across core
counts (see tests/test_distill_learning.py).
"""

import os
import subprocess
import sys

import jax
import numpy as np

from tests.tiny import run_python
from vivit_knn.train.checkpoint import item_path, restore_on_host

STEPS = 4
SAVE_EVERY = 2  # a save at step 2 is written while steps 3 and 4 run
TEACHER = ["--config=configs/synthetic_tiny.py",
           f"--config.train.num_train_steps={STEPS}",
           f"--config.train.checkpoint_every_steps={SAVE_EVERY}",
           "--config.train.eval_at_end=False"]
# The student reads the teacher's 4x24x24 clips; no stage 1, so no CNN teacher is built.
STUDENT = ["--config=configs/synthetic_tsd.py",
           "--config.dataset.num_frames=4", "--config.dataset.image_size=24",
           "--config.dataset.num_train=64", "--config.dataset.num_eval=32",
           "--config.train.global_batch_size=8",
           f"--config.train.num_train_steps={STEPS}",
           f"--config.train.checkpoint_every_steps={SAVE_EVERY}",
           "--config.train.log_every_steps=1", "--config.train.eval_at_end=False",
           "--config.optimizer.warmup_steps=1",
           "--config.distill.stage1_steps=0",
           "--config.distill.stage2.config_file=configs/synthetic_tiny.py"]


def _cores():
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def _train(flags, workdir, busy):
  """Runs `python -m vivit_knn.main` to the end; with `busy`, every core is kept busy."""
  hogs = []
  try:
    if busy:
      hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
              for _ in range(_cores())]
    return run_python(["-m", "vivit_knn.main", f"--workdir={workdir}"] + flags)
  finally:
    for hog in hogs:
      hog.kill()
    for hog in hogs:
      hog.wait()


def _checkpoints(workdir):
  """`{step: {array path: host array}}` of every checkpoint in the run."""
  folder = workdir / "checkpoints"
  steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
  return {step: {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
                 jax.tree_util.tree_leaves_with_path(restore_on_host(item_path(workdir, step)))}
          for step in steps}


def _assert_bitwise_equal(idle, busy):
  a, b = _checkpoints(idle), _checkpoints(busy)
  assert list(a) == list(b) == [SAVE_EVERY, STEPS]
  for step in a:
    assert a[step].keys() == b[step].keys()
    differ = [k for k in a[step] if a[step][k].dtype != b[step][k].dtype
              or a[step][k].shape != b[step][k].shape
              or a[step][k].tobytes() != b[step][k].tobytes()]
    assert not differ, (f"step {step}: {len(differ)} of {len(a[step])} arrays differ under "
                        f"load, e.g. {differ[:5]}")


def test_teacher_and_distilled_student_are_bitwise_equal_under_load(tmp_path):
  runs = {}
  for busy in (False, True):
    name = "busy" if busy else "idle"
    teacher, student = tmp_path / f"teacher_{name}", tmp_path / f"student_{name}"
    _train(TEACHER, teacher, busy)
    proc = _train(STUDENT + [f"--config.distill.stage2.workdir={teacher}"], student, busy)
    assert "Stage-2 teacher" in proc.stderr  # the student did learn from the teacher
    runs[name] = teacher, student

  _assert_bitwise_equal(runs["idle"][0], runs["busy"][0])
  _assert_bitwise_equal(runs["idle"][1], runs["busy"][1])
