"""`--mode=infer --video=<folder>` from a run trained on the synthetic task: a CSV of top-5s."""

import csv
import os
import re

import numpy as np
import pytest

from tests import video_fixtures
from tests.tiny import run_python

SYNTHETIC_CLASSES = {"left_up", "left_down", "right_up", "right_down"}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
  """A 2-step synthetic_tiny run, and a folder of real videos of other sizes than its 24x24 clips."""
  tmp = tmp_path_factory.mktemp("inferfolder")
  work = tmp / "run"
  run_python(["-m", "vivit_knn.main", "--config=configs/synthetic_tiny.py", f"--workdir={work}",
              "--config.train.num_train_steps=2", "--config.optimizer.warmup_steps=0",
              "--config.train.eval_at_end=False"])
  videos = tmp / "my clips"
  (videos / "nested").mkdir(parents=True)
  video_fixtures.write_video(str(videos / "wide.avi"),
                             video_fixtures.synthetic_frames(10, 48, 64, 0))
  video_fixtures.write_video(str(videos / "nested" / "tall.mp4"),
                             video_fixtures.synthetic_frames(7, 50, 36, 1, seed=3))
  (videos / "broken.avi").write_bytes(b"\x00junk" * 500)
  (videos / "notes.txt").write_text("not a video\n")
  return work, videos


def _infer(work, video):
  return run_python(["-m", "vivit_knn.main", "--config=configs/synthetic_tiny.py",
                     f"--workdir={work}", "--mode=infer", f"--video={video}"], check=False)


def test_folder_writes_top_classes_of_every_readable_video(synthetic_run):
  work, videos = synthetic_run
  proc = _infer(work, videos)
  assert proc.returncode == 0, proc.stderr
  csv_path = work / "predictions" / "my clips_step_2.csv"
  skipped_path = work / "predictions" / "my clips_step_2_skipped.txt"
  assert f"predictions: {csv_path}" in proc.stdout
  assert re.search(r"predicted 2 of 3 videos .*\(1 unreadable, skipped, see .*_skipped\.txt\); "
                   r"1 other files ignored", proc.stdout), proc.stdout
  assert "skipped broken.avi" in proc.stdout
  assert skipped_path.read_text().startswith("broken.avi: ")
  with open(csv_path) as f:
    rows = list(csv.reader(f))
  # Four classes: the CSV holds them all, file first.
  assert rows[0] == ["file", "top1_class", "top1_prob", "top2_class", "top2_prob",
                     "top3_class", "top3_prob", "top4_class", "top4_prob"]
  assert [r[0] for r in rows[1:]] == [os.path.join("nested", "tall.mp4"), "wide.avi"]
  for row in rows[1:]:
    names, probs = row[1::2], np.array([float(p) for p in row[2::2]])
    assert set(names) == SYNTHETIC_CLASSES
    assert np.all(np.diff(probs) <= 0) and abs(probs.sum() - 1.0) < 1e-5
    # Full precision, not the 4 decimals of the printed single-video report.
    assert any(len(p.split(".")[1]) > 4 for p in row[2::2])
  # Different videos go through the model as different clips.
  assert rows[1][2:] != rows[2][2:]


def test_a_folder_without_videos_is_one_clear_error(synthetic_run, tmp_path):
  work, _ = synthetic_run
  (tmp_path / "readme.txt").write_text("nothing here\n")
  proc = _infer(work, tmp_path)
  assert proc.returncode == 2
  assert str(tmp_path) in proc.stderr and "no video file" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
