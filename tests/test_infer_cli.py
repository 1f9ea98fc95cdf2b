"""`--mode=infer` prints the top-5 classes of one real video, from a trained checkpoint."""

import re

import pytest

from tests import video_fixtures
from tests.tiny import run_python, write_folder_config

CLASSES = ("ApplyLipstick", "Biking", "Diving", "Drumming", "Fencing", "Surfing")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny Dk-ViViT trained for a few steps on a 6-class UCF101 folder layout."""
  tmp = tmp_path_factory.mktemp("infer")
  layout = video_fixtures.write_ucf101(str(tmp / "ucf"), classes=CLASSES, train_per_class=2,
                                test_per_class=1, num_frames=12)
  cfg = tmp / "ucf_tiny.py"
  write_folder_config(cfg, layout.root, {"dataset.num_test_clips": 2})
  work = tmp / "run"
  run_python(["-m", "vivit_knn.main", f"--config={cfg}", f"--workdir={work}",
              "--config.train.num_train_steps=4", "--config.train.global_batch_size=4",
              "--config.eval.global_batch_size=4", "--config.train.eval_at_end=False"])
  return layout, cfg, work


def _infer(trained, video):
  _, cfg, work = trained
  return run_python(["-m", "vivit_knn.main", f"--config={cfg}", f"--workdir={work}",
                     "--mode=infer", f"--video={video}"], check=False)


def test_infer_prints_top5_class_names_with_probabilities(trained):
  layout = trained[0]
  out = _infer(trained, f"{layout.root}/{layout.test[0]}").stdout
  rows = re.findall(r"^(\d)\. (\S+)\s+([0-9.]+)$", out, flags=re.M)
  assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
  assert {r[1] for r in rows} <= set(CLASSES) and len({r[1] for r in rows}) == 5
  probs = [float(r[2]) for r in rows]
  assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_infer_on_a_corrupt_video_names_the_file(trained, tmp_path):
  bad = tmp_path / "broken.avi"
  bad.write_bytes(b"not a video at all" * 100)
  proc = _infer(trained, bad)
  assert proc.returncode == 2
  assert "broken.avi" in proc.stderr


def test_infer_on_a_missing_video_names_the_file(trained, tmp_path):
  proc = _infer(trained, tmp_path / "nowhere.avi")
  assert proc.returncode == 2 and "nowhere.avi" in proc.stderr
