"""Same command, same result: a run's checkpoints do not depend on the machine's load.

A tiny k-NN teacher and a student distilled from it (stage 2: `alpha*CE +
(1-alpha)*KL` against the teacher restored from its run) are each trained twice
through `python -m vivit_knn.main`: first one after the other on an idle
machine, then side by side while one busy-loop process per usable core keeps
every core busy. Both students learn from the idle teacher run, so their
commands are the same. Every checkpoint of a busy run must equal the idle one
bit for bit. Load changes the timing of everything asynchronous (tf.data's
parallel decoding and prefetching, Orbax's background saves while the next
steps already run, the teacher's restore, XLA's thread pool), so a result that
depends on timing shows up here. The busy runs load the idle runs' compiled
steps from JAX's persistent cache (what XLA emits depends on the core count, not
on timing), which halves the test's time.

Note: XLA on CPU splits large reductions by the size of its thread pool, which
is the number of cores the process may use when it starts. Runs are therefore
bitwise reproducible for a given core count, under any load, but not across core
counts (see tests/test_distill_learning.py).
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from tests.events import read_scalars
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
           "--config.model.num_layers=2", "--config.model.student.mhca_layers=1",
           "--config.model.student.branch_heads=2", "--config.model.hidden_size=32",
           "--config.model.mlp_dim=64",
           "--config.train.global_batch_size=8",
           f"--config.train.num_train_steps={STEPS}",
           f"--config.train.checkpoint_every_steps={SAVE_EVERY}",
           "--config.train.log_every_steps=1", "--config.train.eval_at_end=False",
           "--config.optimizer.warmup_steps=1",
           "--config.distill.stage1_steps=0",
           "--config.distill.stage2.config_file=configs/synthetic_tiny.py"]


class _BusyCores:
  """Keeps every usable core busy with one busy-loop process per core, while open."""

  def __enter__(self):
    try:
      cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
      cores = os.cpu_count() or 1
    self.hogs = []
    try:
      for _ in range(cores):
        self.hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
    except BaseException:
      self.__exit__()
      raise
    return self

  def __exit__(self, *exc):
    for hog in self.hogs:
      hog.kill()
    for hog in self.hogs:
      hog.wait()


def _train(flags, workdir, cache):
  """Runs `python -m vivit_knn.main` to the end, sharing compilations through `cache`."""
  run_python(["-m", "vivit_knn.main", f"--workdir={workdir}"] + flags,
             {"JAX_COMPILATION_CACHE_DIR": str(cache),
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})


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
  cache = tmp_path / "jax_cache"
  student = STUDENT + [f"--config.distill.stage2.workdir={tmp_path / 'teacher_idle'}"]
  _train(TEACHER, tmp_path / "teacher_idle", cache)
  _train(student, tmp_path / "student_idle", cache)
  # Under load, the teacher and the student (taught by the same teacher run as the idle
  # student, so that the two student commands are the same) train side by side.
  with _BusyCores(), ThreadPoolExecutor(2) as pool:
    runs = [pool.submit(_train, TEACHER, tmp_path / "teacher_busy", cache),
            pool.submit(_train, student, tmp_path / "student_busy", cache)]
    for run in runs:
      run.result()

  for name in ("student_idle", "student_busy"):
    # The student did learn from the teacher: the KL term was logged at every step.
    kd = read_scalars(tmp_path / name / "train")["train/loss/kd"]
    assert [step for step, _ in kd] == list(range(1, STEPS + 1))
  _assert_bitwise_equal(tmp_path / "teacher_idle", tmp_path / "teacher_busy")
  _assert_bitwise_equal(tmp_path / "student_idle", tmp_path / "student_busy")
