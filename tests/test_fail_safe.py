"""Failing safe through the command lines: no poisoned checkpoint, damaged checkpoints
skipped with a warning, one-line errors with documented exit codes, Ctrl-C saves."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.tiny import ROOT, run_python
from vivit_knn.train.checkpoint import item_path, restore_on_host

MAIN = ["-m", "vivit_knn.main"]
TINY = MAIN + ["--config=configs/synthetic_tiny.py"]
QUICK = ["--config.train.eval_at_end=False", "--config.optimizer.warmup_steps=0"]
# The documented exit codes (vivit_knn/cli.py, README).
BAD_INPUT, NON_FINITE, PREEMPTED, INTERRUPTED = 2, 3, 4, 130


def _error_lines(proc):
  """stderr lines, without tqdm's progress-bar redraws (which end in carriage returns)."""
  lines = [line.split("\r")[-1] for line in proc.stderr.split("\n")]
  return [line for line in lines if line.strip() and "step/s" not in line
          and "s/step" not in line]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run with checkpoints at steps 2 and 4."""
  work = tmp_path_factory.mktemp("fail_safe") / "run"
  run_python(TINY + [f"--workdir={work}", "--config.train.num_train_steps=4",
                     "--config.train.checkpoint_every_steps=2"] + QUICK)
  assert sorted(os.listdir(work / "checkpoints")) == ["2", "4"]
  return work


def _copy(trained, tmp_path):
  work = tmp_path / "run"
  shutil.copytree(trained, work)
  return work


def _damage(step_dir, how):
  """Damages one checkpoint the ways disks and interrupted copies do."""
  if how == "metadata":
    path = os.path.join(step_dir, "default", "_METADATA")
    with open(path, "wb") as f:
      f.write(b"\xc9\x00not json")
    return
  files = glob.glob(os.path.join(step_dir, "default", "ocdbt.process_0", "d", "*"))
  path = max(files, key=os.path.getsize)  # the file holding most of the arrays
  data = bytearray(open(path, "rb").read())
  if how == "flip":
    data[len(data) // 2] ^= 0x10
  elif how == "truncate":
    data = data[:len(data) // 3]
  else:
    data = bytearray(np.random.default_rng(0).integers(0, 256, len(data), np.uint8).tobytes())
  with open(path, "wb") as f:
    f.write(bytes(data))


def test_exploding_learning_rate_never_saves_a_non_finite_state(tmp_path):
  work = tmp_path / "run"
  proc = run_python(TINY + [f"--workdir={work}", "--config.optimizer.base_learning_rate=1e30",
                            "--config.optimizer.grad_clip_norm=0", "--config.train.num_train_steps=8",
                            "--config.train.checkpoint_every_steps=1",
                            "--config.train.log_every_steps=1"] + QUICK, check=False)
  assert proc.returncode == NON_FINITE, proc.stderr
  errors = _error_lines(proc)
  assert len(errors) <= 3 and errors[-1].startswith("error: step ")
  assert "first: params/" in errors[-1] or "first: opt_state/" in errors[-1]
  assert "base_learning_rate" in errors[-1]
  saved = os.listdir(work / "checkpoints") if (work / "checkpoints").exists() else []
  for step in saved:
    tree = restore_on_host(item_path(str(work), int(step)))
    for leaf in __import__("jax").tree.leaves(tree):
      assert np.all(np.isfinite(np.asarray(leaf, np.float64))), step


@pytest.mark.parametrize("how", ["flip", "truncate", "garbage", "metadata"])
def test_eval_falls_back_from_a_damaged_newest_checkpoint(trained, tmp_path, how):
  work = _copy(trained, tmp_path)
  _damage(str(work / "checkpoints" / "4"), how)
  proc = run_python(TINY + [f"--workdir={work}", "--mode=eval"])
  assert "checkpoint step 2" in proc.stdout
  warnings = [l for l in _error_lines(proc) if l.startswith("warning:")]
  assert len(warnings) == 1 and "step 4" in warnings[0] and "falling back to step 2" in warnings[0]
  assert (work / "checkpoints" / "4").exists()  # eval changes nothing in the run


def test_training_resumes_from_the_last_good_step_and_keeps_the_damaged_one(trained, tmp_path):
  work = _copy(trained, tmp_path)
  _damage(str(work / "checkpoints" / "4"), "flip")
  proc = run_python(TINY + [f"--workdir={work}", "--config.train.num_train_steps=6",
                            "--config.train.checkpoint_every_steps=2"] + QUICK)
  assert "initialisation: resume (step 2 " in proc.stdout
  assert "checksum mismatch" in proc.stderr
  assert (work / "checkpoints_damaged" / "4").is_dir()
  assert sorted(os.listdir(work / "checkpoints")) == ["2", "4", "6"]


def test_every_step_damaged_is_one_error_not_a_fresh_start(trained, tmp_path):
  work = _copy(trained, tmp_path)
  _damage(str(work / "checkpoints" / "4"), "truncate")
  _damage(str(work / "checkpoints" / "2"), "metadata")
  for mode in ("eval", "train"):
    proc = run_python(TINY + [f"--workdir={work}", f"--mode={mode}"] + QUICK, check=False)
    assert proc.returncode == BAD_INPUT
    errors = _error_lines(proc)
    assert len(errors) <= 3, errors
    assert errors[-1].startswith(f"error: no readable checkpoint in {work / 'checkpoints'}")
    assert "initialisation" not in proc.stdout


def test_eval_of_a_read_only_run_writes_only_to_output_dir(trained, tmp_path):
  work = _copy(trained, tmp_path)
  before = sorted(str(p) for p in work.rglob("*"))
  out = tmp_path / "reports"
  run_python(TINY + [f"--workdir={work}", "--mode=eval", f"--output_dir={out}"])
  assert sorted(str(p) for p in work.rglob("*")) == before
  assert (out / "eval" / "results_step_4_1x1.json").is_file()
  # The --config file values the stored config overrides are listed there too.
  assert "stored" in (out / "config_not_used.txt").read_text()


def test_resuming_with_another_shape_lists_the_parameters(trained, tmp_path):
  work = _copy(trained, tmp_path)
  args = TINY + [f"--workdir={work}", "--config.model.mlp_dim=48",
                 "--config.train.num_train_steps=6"] + QUICK
  # The stored run config refuses the shape change before any checkpoint is read.
  proc = run_python(args, check=False)
  assert proc.returncode == BAD_INPUT
  errors = _error_lines(proc)
  assert len(errors) == 1 and "model.mlp_dim: 32 -> 48" in errors[0], errors
  # A run written without a stored config is caught by the checkpoint's own shapes,
  # once the --config file is accepted for it.
  (work / "config.json").unlink()
  proc = run_python(args + ["--use_config_file"], check=False)
  assert proc.returncode == BAD_INPUT
  errors = _error_lines(proc)
  assert errors[0].startswith("error: the model this config builds does not fit checkpoint")
  detail = errors[1:]
  assert 1 <= len(detail) <= 11
  assert any("MlpBlock_0/Dense_0/kernel: stored (16, 32), requested (16, 48)" in l for l in detail)


@pytest.mark.parametrize("cli", [MAIN, ["-m", "vivit_knn.tools.model_stats"]])
def test_config_errors_are_one_line(tmp_path, cli):
  syntax = tmp_path / "syntax.py"
  syntax.write_text("def get_config(:\n")
  raising = tmp_path / "raising.py"
  raising.write_text("def get_config():\n  raise RuntimeError('no such dataset here')\n")
  work = [f"--workdir={tmp_path / 'w'}"] if cli is MAIN else []
  cases = {
      "configs/synthetic_tiny.py --config.model.hiden_size=8": "did you mean 'model.hidden_size'",
      # Faults are injected by the tests' harness (tests/faults.py), never by a config key.
      "configs/synthetic_tiny.py --config.train.debug_kill_after_step=1":
          "unknown config key 'train.debug_kill_after_step'",
      "configs/synthetic_dk.py --config.dataset.num_test_clips=2":
          "config key 'dataset.num_test_clips' is not in this config's dataset: only "
          "dataset.name 'tfrecord', 'tfds', 'ucf101', 'hmdb51' read it",
      "configs/does_not_exist.py": "no such file",
      f"{syntax}": "syntax error",
      f"{raising}": "RuntimeError: no such dataset here",
  }
  for args, expected in cases.items():
    config, *overrides = args.split()
    proc = run_python(cli + [f"--config={config}"] + overrides + work, check=False)
    assert proc.returncode == BAD_INPUT, (args, proc.stderr)
    errors = _error_lines(proc)
    assert 1 <= len(errors) <= 3 and errors[-1].startswith("error: "), (args, errors)
    assert expected in errors[-1], (args, errors)
  assert not (tmp_path / "w").exists()


def test_bad_values_and_folders_are_one_line_before_training(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  cases = [
      (TINY + [f"--workdir={blocker / 'run'}"] + QUICK, "a_file"),
      (TINY + [f"--workdir={tmp_path / 'r'}", "--config.eval.global_batch_size=-8"] + QUICK,
       "eval.global_batch_size"),
      (TINY + [f"--workdir={tmp_path / 'missing'}", "--mode=eval"], "holds no checkpoint"),
      (["-m", "vivit_knn.data.convert", "--format=ucf101", f"--root={tmp_path / 'none'}",
        f"--out={tmp_path / 'o'}"], "none"),
      (["-m", "vivit_knn.weights.convert", f"--from={blocker}", "--format=vit_npz",
        f"--to={tmp_path / 'o2'}"], "a_file"),
  ]
  for args, expected in cases:
    proc = run_python(args, check=False)
    assert proc.returncode == BAD_INPUT, (args, proc.stderr)
    errors = _error_lines(proc)
    assert 1 <= len(errors) <= 3 and errors[-1].startswith("error: "), (args, errors)
    assert expected in errors[-1], (args, errors)
  assert not (tmp_path / "missing").exists()  # eval creates nothing where nothing was


def _start_training(work):
  """Starts a long tiny run; returns (process, stderr chunks) once its steps are running."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(
      [sys.executable] + TINY + [f"--workdir={work}", "--config.train.num_train_steps=1000000",
                                 "--config.train.checkpoint_every_steps=1000000",
                                 "--config.train.log_every_steps=10"] + QUICK,
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  chunks = []
  reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(1), "")),
                            daemon=True)
  reader.start()
  deadline = time.time() + 240
  while time.time() < deadline and "s/step" not in "".join(chunks):
    time.sleep(0.2)  # the progress bar shows a rate once steps are running
  assert proc.poll() is None, "".join(chunks)
  return proc, chunks, reader


def _finish(proc, chunks, reader):
  out = proc.stdout.read()
  proc.wait(timeout=240)
  reader.join(timeout=30)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(chunks))


def test_ctrl_c_saves_and_exits_with_the_preempted_code(tmp_path):
  work = tmp_path / "run"
  proc, chunks, reader = _start_training(work)
  proc.send_signal(signal.SIGINT)
  done = _finish(proc, chunks, reader)
  assert done.returncode == PREEMPTED, done.stderr[-2000:]
  assert len(_error_lines(done)) <= 3, _error_lines(done)
  saved = os.listdir(work / "checkpoints")
  assert len(saved) == 1 and 0 < int(saved[0]) < 1000000
  assert "rerun to resume" in done.stdout


def test_second_ctrl_c_quits_at_once(tmp_path):
  work = tmp_path / "run"
  proc, chunks, reader = _start_training(work)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.01)
  proc.send_signal(signal.SIGINT)
  done = _finish(proc, chunks, reader)
  # Either the second Ctrl-C arrived first (interrupted, nothing saved) or the first had
  # already been served at a step boundary (preempted, one checkpoint): never a traceback.
  assert done.returncode in (PREEMPTED, INTERRUPTED), done.stderr[-2000:]
  assert len(_error_lines(done)) <= 3, _error_lines(done)
  saved = os.listdir(work / "checkpoints") if (work / "checkpoints").exists() else []
  assert len(saved) == (1 if done.returncode == PREEMPTED else 0)
