"""Nothing lost: stop signals from start to exit, one trainer per workdir, checksums inside
every save, resumes that never rewrite history, eval beside a rotating trainer, a full disk.

Faults are injected by small harnesses that patch the library from outside and then
run the real command line (`vivit_knn.main.run`) in a subprocess.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.tiny import ROOT, run_python

MAIN = ["-m", "vivit_knn.main"]
TINY = ["--config=configs/synthetic_tiny.py"]
QUICK = ["--config.train.eval_at_end=False", "--config.optimizer.warmup_steps=0"]
BAD_INPUT, PREEMPTED = 2, 4

# Runs `vivit_knn.main` after the patches in the first argument (a Python snippet).
HARNESS = """
import sys
exec(sys.argv.pop(1))
sys.argv[0] = 'vivit_knn.main'
from vivit_knn import main
main.run()
"""

SLOW_FINAL_SAVE = """
import time
from vivit_knn.train import checkpoint
_save = checkpoint.Checkpointer.save
def _slow(self, step, state, *, force=False):
  started = _save(self, step, state, force=force)
  if force and started:
    print('FINAL SAVE STARTED', flush=True)
    time.sleep(4)
  return started
checkpoint.Checkpointer.save = _slow
"""

SLOW_EVAL = """
import time
from vivit_knn.train import evaluation
_run_eval = evaluation.run_eval
def _slow(*args, **kwargs):
  print('EVAL STARTED', flush=True)
  time.sleep(30)
  return _run_eval(*args, **kwargs)
evaluation.run_eval = _slow
"""

# A hard kill right after a save has fully reached the disk, before the next one starts.
KILL_AFTER_SAVE_4 = """
import os, signal
from vivit_knn.train import checkpoint
_save = checkpoint.Checkpointer.save
def _save_then_die(self, step, state, *, force=False):
  if step == 5:
    self._manager.wait_until_finished()
    os.kill(os.getpid(), signal.SIGKILL)
  return _save(self, step, state, force=force)
checkpoint.Checkpointer.save = _save_then_die
"""


def _env():
  return dict(os.environ, PYTHONPATH=ROOT)


def _lines(text):
  """Non-empty lines, without progress lines and the stop notice of a deferred signal."""
  lines = [line.split("\r")[-1] for line in text.split("\n")]
  return [line for line in lines if line.strip() and "s/step" not in line
          and not line.startswith("stopping (")]


def _bad_input_line(proc):
  """The one stderr line of a command that ended with exit 2 (asserts both)."""
  assert proc.returncode == BAD_INPUT, proc.stderr[-3000:]
  errors = _lines(proc.stderr)
  assert len(errors) == 1, errors
  return errors[0]


class Started:
  """A command line started in the background, its output collected by threads."""

  def __init__(self, args, patch=None):
    argv = [sys.executable] + (["-c", HARNESS, patch] if patch else MAIN) + args
    self.proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    self.out, self.err = [], []
    self._threads = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                     for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
    for t in self._threads:
      t.start()

  @staticmethod
  def _pump(stream, sink):
    for line in iter(stream.readline, ""):
      sink.append(line)

  def wait_for(self, text, timeout=240):
    """Waits until `text` shows on stdout or stderr; fails if the process ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      if text in "".join(self.out) + "".join(self.err):
        return
      assert self.proc.poll() is None, "".join(self.out) + "".join(self.err)
      time.sleep(0.1)
    raise AssertionError(f"{text!r} did not show within {timeout} s")

  def finish(self, timeout=240):
    self.proc.wait(timeout=timeout)
    for t in self._threads:
      t.join(timeout=30)
    return self.proc.returncode, "".join(self.out), "".join(self.err)


def _steps(work):
  folder = work / "checkpoints"
  return sorted(int(p) for p in os.listdir(folder) if p.isdigit()) if folder.exists() else []


def _has_checksums(work, step):
  return (work / "checkpoints" / str(step) / "checksums" / "metadata").is_file()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run with checkpoints at steps 2 and 4."""
  work = tmp_path_factory.mktemp("nothing_lost") / "run"
  run_python(MAIN + TINY + [f"--workdir={work}", "--config.train.num_train_steps=4",
                            "--config.train.checkpoint_every_steps=2"] + QUICK)
  return work


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_final_save_leaves_a_complete_checkpoint(tmp_path, sig):
  work = tmp_path / "run"
  run = Started(TINY + [f"--workdir={work}", "--config.train.num_train_steps=3",
                        "--config.train.checkpoint_every_steps=1000"] + QUICK,
                patch=SLOW_FINAL_SAVE)
  run.wait_for("FINAL SAVE STARTED")
  run.proc.send_signal(sig)
  code, out, err = run.finish()
  assert code == PREEMPTED, err[-3000:]
  assert _steps(work) == [3] and _has_checksums(work, 3)
  assert "preempted at step 3: checkpoint saved" in out
  assert len(_lines(err)) == 0, err
  if sig == signal.SIGTERM:  # the saved step is whole: evaluating it, verified, works
    proc = run_python(MAIN + TINY + [f"--workdir={work}", "--mode=eval", "--strict"])
    assert "checkpoint step 3" in proc.stdout


def test_a_signal_during_the_end_of_run_eval_keeps_the_checkpoint(tmp_path):
  work = tmp_path / "run"
  run = Started(TINY + [f"--workdir={work}", "--config.train.num_train_steps=2",
                        "--config.optimizer.warmup_steps=0"], patch=SLOW_EVAL)
  run.wait_for("EVAL STARTED")
  run.proc.send_signal(signal.SIGTERM)
  code, _, err = run.finish()
  assert code == PREEMPTED, err[-3000:]
  assert _lines(err) == [f"stopped by SIGTERM; checkpoint step 2 is saved in "
                         f"{work / 'checkpoints'}: rerun to go on"]
  assert _steps(work) == [2] and _has_checksums(work, 2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_signal_during_start_up_exits_at_once_in_one_line(tmp_path, sig):
  work = tmp_path / "run"
  run = Started(TINY + [f"--workdir={work}"] + QUICK)
  time.sleep(1.5)  # the libraries are still loading
  run.proc.send_signal(sig)
  code, _, err = run.finish(timeout=60)
  assert code == PREEMPTED, err[-3000:]
  assert _lines(err) == [f"stopped by {signal.Signals(sig).name} during start-up, before the "
                         "first training step: nothing to save"]
  assert _steps(work) == []


def test_a_second_trainer_on_a_locked_workdir_stops_in_one_line(tmp_path):
  work = tmp_path / "run"
  first = Started(TINY + [f"--workdir={work}", "--config.train.num_train_steps=1000000",
                          "--config.train.checkpoint_every_steps=1000000",
                          "--config.train.log_every_steps=5"] + QUICK)
  first.wait_for("s/step")
  stored = (work / "config.json").read_bytes()
  proc = run_python(MAIN + TINY + [f"--workdir={work}", "--config.seed=7",
                                   "--config.train.num_train_steps=9"] + QUICK, check=False)
  error = _bad_input_line(proc)
  assert "is being trained by another process" in error
  assert f"pid {first.proc.pid}" in error and "started 20" in error
  assert (work / "config.json").read_bytes() == stored
  assert not [p for p in os.listdir(work / "checkpoints") if "tmp" in p]
  first.proc.send_signal(signal.SIGTERM)  # the first goes on unharmed and saves
  code, out, err = first.finish()
  assert code == PREEMPTED, err[-3000:]
  assert len(_steps(work)) == 1 and "preempted at step" in out


def test_kill_9_between_saves_leaves_checksums_and_the_lock_is_taken_over(tmp_path):
  work = tmp_path / "run"
  args = TINY + [f"--workdir={work}", "--config.train.num_train_steps=6",
                 "--config.train.checkpoint_every_steps=2", "--config.train.keep_checkpoints=5"]
  killed = Started(args + QUICK, patch=KILL_AFTER_SAVE_4)
  code, _, err = killed.finish()
  assert code == -signal.SIGKILL, err[-3000:]
  assert _steps(work) == [2, 4]
  assert all(_has_checksums(work, s) for s in _steps(work))
  assert json.loads((work / "train.lock").read_text())["pid"] == killed.proc.pid
  proc = run_python(MAIN + args + QUICK + ["--strict"])
  assert "took over the training lock of a run that did not end cleanly (host " in proc.stderr
  assert f"pid {killed.proc.pid}" in proc.stderr
  assert "initialisation: resume (step 4 " in proc.stdout
  assert _steps(work) == [2, 4, 6] and (work / "train.lock").read_text() == ""


def test_a_resume_cannot_go_back_in_time(trained, tmp_path):
  work = tmp_path / "run"
  shutil.copytree(trained, work)
  before = sorted(str(p) for p in (work / "checkpoints").rglob("*"))
  proc = run_python(MAIN + TINY + [f"--workdir={work}", "--config.train.num_train_steps=3"]
                    + QUICK, check=False)
  error = _bad_input_line(proc)
  assert "already holds checkpoint step 4, beyond the end of this run at step 3" in error
  assert "train.num_train_steps to at least 4" in error
  assert sorted(str(p) for p in (work / "checkpoints").rglob("*")) == before
  assert not (work / "eval").exists()


def test_a_missing_config_json_is_refused_unless_the_file_is_accepted(trained, tmp_path):
  work = tmp_path / "run"
  shutil.copytree(trained, work)
  (work / "config.json").unlink()
  for mode in ("eval", "train"):
    proc = run_python(MAIN + TINY + [f"--workdir={work}", f"--mode={mode}"] + QUICK, check=False)
    error = _bad_input_line(proc)
    assert "has checkpoints but no config.json" in error and "--use_config_file" in error
  proc = run_python(MAIN + TINY + [f"--workdir={work}", "--config.train.num_train_steps=4",
                                   "--use_config_file"] + QUICK)
  assert "initialisation: resume (step 4 " in proc.stdout
  stored = json.loads((work / "config.json").read_text())["config"]
  assert stored["train"]["num_train_steps"] == 4  # stored for the next command


def test_unverified_checkpoints_warn_in_one_line_and_strict_refuses(trained, tmp_path):
  work = tmp_path / "run"
  shutil.copytree(trained, work)
  # Step 4 as an older version wrote it: no checksums item.
  step = work / "checkpoints" / "4"
  shutil.rmtree(step / "checksums")
  meta = json.loads((step / "_CHECKPOINT_METADATA").read_text())
  del meta["item_handlers"]["checksums"]
  (step / "_CHECKPOINT_METADATA").write_text(json.dumps(meta))
  proc = run_python(MAIN + TINY + [f"--workdir={work}", "--mode=eval"])
  warnings = [l for l in _lines(proc.stderr) if l.startswith("warning:")]
  assert len(warnings) == 1 and "step 4" in warnings[0] and "unverified" in warnings[0]
  assert "checkpoint step 4" in proc.stdout
  proc = run_python(MAIN + TINY + [f"--workdir={work}", "--mode=eval", "--strict"], check=False)
  error = _bad_input_line(proc)
  assert "step 4" in error and "has no checksums" in error, error


# 20 rounds of the restore that `--mode=eval` runs (a read-only checkpointer on the newest
# step), the experiment built once; then two whole evaluations through the same entry.
EVAL_ROUNDS = """
import sys
from vivit_knn.train import checkpoint, trainer
from vivit_knn.train.experiment import build_experiment
from vivit_knn.train.run_config import load_run_config
workdir, out = sys.argv[1], sys.argv[2]
config = load_run_config(workdir)
target = build_experiment(config, training=False).abstract_state()
steps = []
for _ in range(20):
  ckpt = checkpoint.Checkpointer(workdir, read_only=True, strict=True)
  ckpt.restore(target)
  steps.append(ckpt.restored_step)
for _ in range(2):
  steps.append(trainer.evaluate_checkpoint(config, workdir, output_dir=out, strict=True)['step'])
print('EVALUATED', steps)
"""


def test_eval_beside_a_trainer_rotating_every_step_always_succeeds(tmp_path):
  work = tmp_path / "run"
  trainer_run = Started(TINY + [f"--workdir={work}", "--config.train.num_train_steps=1000000",
                                "--config.train.checkpoint_every_steps=1",
                                "--config.train.keep_checkpoints=2",
                                "--config.train.log_every_steps=1"] + QUICK)
  deadline = time.time() + 240
  while len(_steps(work)) < 2:
    assert time.time() < deadline and trainer_run.proc.poll() is None, "".join(trainer_run.err)
    time.sleep(0.2)
  try:
    proc = run_python(["-c", EVAL_ROUNDS, str(work), str(tmp_path / "reports")], check=False)
    assert trainer_run.proc.poll() is None  # the trainer kept rotating throughout
  finally:
    trainer_run.proc.send_signal(signal.SIGTERM)
    trainer_run.finish()
  assert proc.returncode == 0, proc.stderr[-3000:]
  steps = json.loads(proc.stdout.split("EVALUATED")[-1].strip())
  assert len(steps) == 22 and steps == sorted(steps) and steps[-1] > steps[0], steps


def test_following_the_non_finite_advice_gets_the_run_going_again(tmp_path):
  work = tmp_path / "run"
  args = TINY + [f"--workdir={work}", "--config.train.num_train_steps=10",
                 "--config.train.checkpoint_every_steps=2", "--config.train.keep_checkpoints=20",
                 "--config.train.log_every_steps=2"] + QUICK
  proc = run_python(MAIN + args + ["--config.optimizer.base_learning_rate=100",
                                   "--config.optimizer.grad_clip_norm=0"], check=False)
  assert proc.returncode == 3, proc.stderr[-3000:]
  error = _lines(proc.stderr)[-1]
  assert "already holds parameters up to" in error and "is the newest sane one" in error, error
  advice = error.split("rerun the same command with ")[1].split(" (now")[0].split()
  assert advice[0].startswith("--restart_from_step=")
  assert "--config.optimizer.base_learning_rate=10" in advice
  assert "--config.optimizer.grad_clip_norm=1" in advice
  # Followed literally: the run goes on from the sane step to the end.
  proc = run_python(MAIN + args + advice)
  restart = int(advice[0].split("=")[1])
  assert f"initialisation: resume (step {restart} " in proc.stdout
  assert _steps(work)[-1] == 10
  assert (work / "checkpoints_superseded").is_dir()


def test_a_full_disk_is_one_line_and_keeps_the_last_step(tmp_path):
  disk = tmp_path / "small_disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)],
                           capture_output=True, check=False)
  if mounted.returncode != 0:
    pytest.skip(f"a small disk cannot be mounted here: {mounted.stderr.decode().strip()}")
  try:
    work = disk / "run"
    proc = run_python(MAIN + TINY + [f"--workdir={work}", "--config.train.num_train_steps=20",
                                     "--config.train.checkpoint_every_steps=2",
                                     "--config.train.keep_checkpoints=10"] + QUICK, check=False)
    error = _bad_input_line(proc)
    last = _steps(work)[-1]
    assert error == (f"error: no space left on the device for the checkpoints in "
                         f"{work / 'checkpoints'} (the newest complete checkpoint, step {last}, "
                         "is intact): free space and rerun to resume")
    run_python(MAIN + TINY + [f"--workdir={work}", "--mode=eval", "--strict",
                              f"--output_dir={tmp_path / 'reports'}"])
  finally:
    subprocess.run(["umount", str(disk)], check=False)


def test_infer_skips_a_damaged_newest_checkpoint_and_says_so(trained, tmp_path):
  from tests import video_fixtures  # pylint: disable=import-outside-toplevel
  work = tmp_path / "run"
  shutil.copytree(trained, work)
  data = [p for p in (work / "checkpoints" / "4" / "default" / "ocdbt.process_0" / "d").iterdir()]
  biggest = max(data, key=lambda p: p.stat().st_size)
  raw = bytearray(biggest.read_bytes())
  raw[len(raw) // 2] ^= 0x10
  biggest.write_bytes(bytes(raw))
  layout = video_fixtures.write_ucf101(str(tmp_path / "videos"), classes=("Biking",),
                                       train_per_class=1, test_per_class=0, num_frames=8)
  video = os.path.join(layout.root, layout.train[0])
  proc = run_python(MAIN + TINY + [f"--workdir={work}", "--mode=infer", f"--video={video}"])
  warnings = [l for l in _lines(proc.stderr) if l.startswith("warning:")]
  assert len(warnings) == 1, warnings
  assert "checkpoint step 4" in warnings[0] and "checksum mismatch" in warnings[0]
  assert "falling back to step 2" in warnings[0]
  assert "checkpoint: step 2 of" in proc.stdout


def test_another_optimizer_layout_is_refused_not_set_aside_as_damage(trained, tmp_path):
  work = tmp_path / "run"
  shutil.copytree(trained, work)
  (work / "config.json").unlink()  # so that only the checkpoint itself can tell
  proc = run_python(MAIN + TINY + [f"--workdir={work}", "--use_config_file",
                                   "--config.optimizer.name=adamw",
                                   "--config.train.num_train_steps=6"] + QUICK, check=False)
  error = _bad_input_line(proc)
  assert "the train state this config builds does not fit checkpoint step 4" in error
  assert "other optimizer settings" in error
  assert _steps(work) == [2, 4] and not (work / "checkpoints_damaged").exists()
