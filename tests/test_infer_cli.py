"""`--mode=infer` prints the top-5 classes of one real video, from a trained checkpoint."""

import csv
import json
import os
import re
import shutil

import av
import numpy as np
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


def _imported(stderr):
  """The modules `python -X importtime` reports as imported."""
  return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
          if line.startswith("import time:") and "|" in line}


def test_infer_on_a_missing_video_fails_before_tensorflow_and_the_checkpoint_load(trained,
                                                                                 tmp_path):
  _, cfg, work = trained
  missing = tmp_path / "nowhere.avi"
  proc = run_python(["-X", "importtime", "-m", "vivit_knn.main", f"--config={cfg}",
                     f"--workdir={work}", "--mode=infer", f"--video={missing}"], check=False)
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
  assert errors == [f"error: --video={missing} does not exist"]
  imported = _imported(proc.stderr)
  assert "vivit_knn.main" in imported or "absl.app" in imported  # importtime did report
  assert not {"tensorflow", "orbax.checkpoint", "vivit_knn.inference"} & imported


def test_output_video_with_a_folder_is_a_one_line_error(trained, tmp_path):
  _, cfg, work = trained
  proc = run_python(["-X", "importtime", "-m", "vivit_knn.main", f"--config={cfg}",
                     f"--workdir={work}", "--mode=infer", f"--video={tmp_path}",
                     f"--output_video={tmp_path / 'out.mp4'}"], check=False)
  errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
  assert proc.returncode == 2 and len(errors) == 1
  assert "--output_video" in errors[0] and str(tmp_path) in errors[0]
  assert "tensorflow" not in _imported(proc.stderr)
  assert not (tmp_path / "out.mp4").exists()


def test_infer_header_names_the_video_and_the_checkpoint_step(trained):
  layout, _, work = trained
  video = f"{layout.root}/{layout.test[0]}"
  lines = _infer(trained, video).stdout.splitlines()
  assert f"video: {video} (file)" in lines
  assert f"checkpoint: step 4 of {work}" in lines
  assert lines.index(f"checkpoint: step 4 of {work}") < lines.index(
      next(line for line in lines if line.startswith("1. ")))


def test_class_folders_give_a_true_class_column_and_the_accuracy(trained, tmp_path):
  layout = trained[0]
  folder = tmp_path / "clips"
  for name in CLASSES[:3]:
    shutil.copytree(os.path.join(layout.root, name), folder / name)
  (folder / "unsorted").mkdir()
  shutil.copy(os.path.join(layout.root, layout.test[-1]), folder / "unsorted" / "x.avi")
  proc = _infer(trained, folder)
  assert proc.returncode == 0, proc.stderr
  assert f"video: {folder} (folder of 10 videos)" in proc.stdout
  csv_path = proc.stdout.split("predictions: ")[1].strip()
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0])[:3] == ["file", "true_class", "top1_class"]
  truths = {r["file"]: r["true_class"] for r in rows}
  assert truths[os.path.join("unsorted", "x.avi")] == ""
  known = [r for r in rows if r["true_class"]]
  assert len(known) == 9 and all(r["file"].split(os.sep)[0] == r["true_class"] for r in known)
  top1 = np.mean([r["top1_class"] == r["true_class"] for r in known])
  top5 = np.mean([r["true_class"] in [r[f"top{i}_class"] for i in range(1, 6)] for r in known])
  assert (f"accuracy over the 9 videos in class folders: top-1 {top1:.4f}, top-5 {top5:.4f}"
          in proc.stdout)


def test_class_folder_accuracy_is_the_eval_accuracy_on_the_same_videos(trained, tmp_path):
  layout, cfg, work = trained
  folder = tmp_path / "test_split"  # the eval split's videos, in class-named folders
  for rel in layout.test:
    (folder / os.path.dirname(rel)).mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(layout.root, rel), folder / rel)
  reports = tmp_path / "reports"
  run_python(["-m", "vivit_knn.main", f"--config={cfg}", f"--workdir={work}", "--mode=eval",
              f"--output_dir={reports}", "--config.eval.save_logits=True"])
  (results,) = reports.glob("eval/results_step_4_*.json")
  evaluated = json.loads(results.read_text())
  assert evaluated["videos"]["evaluated"] == len(layout.test) == 6
  proc = _infer(trained, folder)
  assert proc.returncode == 0, proc.stderr
  assert (f"accuracy over the 6 videos in class folders: top-1 {evaluated['top1']:.4f}, "
          f"top-5 {evaluated['top5']:.4f}") in proc.stdout, proc.stdout
  # Video by video, the same top-1 class as the eval's logits (the same test views).
  (logits,) = reports.glob("eval/logits_step_4_*.npz")
  saved = np.load(logits)
  with open(proc.stdout.split("predictions: ")[1].strip()) as f:
    rows = {row["file"]: row["top1_class"] for row in csv.DictReader(f)}
  eval_top1 = {os.path.relpath(str(v), layout.root): CLASSES[int(np.argmax(z))]
               for v, z in zip(saved["videos"], saved["logits"])}
  assert rows == eval_top1


def _frames(path):
  with av.open(str(path)) as container:
    return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_output_video_draws_the_top5_on_the_clip(trained, tmp_path):
  layout, cfg, work = trained
  video = f"{layout.root}/{layout.test[0]}"
  out = tmp_path / "labelled.mp4"
  proc = run_python(["-m", "vivit_knn.main", f"--config={cfg}", f"--workdir={work}",
                     "--mode=infer", f"--video={video}", f"--output_video={out}"])
  assert f"labelled video: {out}" in proc.stdout
  source, drawn = _frames(video), _frames(out)
  assert len(drawn) == len(source)
  scale = drawn.shape[1] // source.shape[1]
  assert scale >= 2 and drawn.shape[1:3] == (source.shape[1] * scale, source.shape[2] * scale)
  plain = source.repeat(scale, axis=1).repeat(scale, axis=2).astype(np.int16)
  diff = np.abs(drawn.astype(np.int16) - plain).max(axis=-1)
  rows = drawn.shape[1]
  # The text panel (top rows, left) is changed; the bottom rows keep the clip (codec noise only).
  assert np.mean(diff[:, :rows // 3, : drawn.shape[2] // 2] > 60) > 0.05
  assert np.mean(diff[:, -rows // 4:] > 60) < 0.01
