"""The command line: train + eval on the synthetic config, eval mode, overrides, clear failures."""

import glob
import os

from tests.events import read_scalars
from tests.tiny import run_python

TINY = ["-m", "vivit_knn.main", "--config=configs/synthetic_tiny.py"]


def test_train_then_eval_mode_writes_reports(tmp_path):
  work = tmp_path / "run"
  out = run_python(TINY + [f"--workdir={work}", "--config.train.num_train_steps=6"]).stdout
  assert "top1=" in out and "top5=" in out
  assert (work / "checkpoints" / "6").is_dir()
  scalars = read_scalars(str(work / "train"))
  assert {"train/loss", "train/top1", "train/top5", "train/learning_rate"} <= set(scalars)
  assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6]

  out = run_python(TINY + [f"--workdir={work}", "--mode=eval"]).stdout
  assert "checkpoint step 6" in out
  for name in ("left_up", "right_down"):
    assert name in out  # per-class table
  png = glob.glob(str(work / "eval" / "confusion_matrix_step_6_1x1.png"))
  assert png and open(png[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_override_changes_the_run(tmp_path):
  work = tmp_path / "run"
  run_python(TINY + [f"--workdir={work}", "--config.train.num_train_steps=3",
                     "--config.train.eval_at_end=False"])
  assert sorted(os.listdir(work / "checkpoints")) == ["3"]


def test_misspelt_override_fails():
  proc = run_python(TINY + ["--workdir=unused", "--config.model.hiden_size=3"], check=False)
  assert proc.returncode != 0
  assert "hiden_size" in proc.stderr


def test_impossible_override_names_the_field(tmp_path):
  proc = run_python(TINY + [f"--workdir={tmp_path}", "--config.model.patch_size=(8,8,3)"],
                    check=False)
  assert proc.returncode == 2
  assert "model.patch_size" in proc.stderr and "num_frames" in proc.stderr


def test_eval_without_checkpoint_says_so(tmp_path):
  proc = run_python(TINY + [f"--workdir={tmp_path}", "--mode=eval"], check=False)
  assert proc.returncode == 2 and "no checkpoint" in proc.stderr


def test_ucf101_without_data_fails_fast_with_instructions(tmp_path):
  # From random weights, so the missing data is the first thing the run meets.
  proc = run_python(["-m", "vivit_knn.main", "--config=configs/ucf101_dk.py",
                     f"--workdir={tmp_path}", "--config.init_from.required=False"],
                    check=False, timeout=120)
  assert proc.returncode == 2
  assert "--config.dataset.data_dir" in proc.stderr
  assert not (tmp_path / "checkpoints").exists()
