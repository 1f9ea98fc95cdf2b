"""A run is a record: training stores its config; eval and infer reuse it with their overrides."""

import glob
import json
import os
import re

import pytest

from tests import video_fixtures
from tests.tiny import ROOT, load_config, run_python, write_folder_config
from vivit_knn.train import run_config

CLASSES = ("ApplyLipstick", "Biking", "Diving", "Drumming", "Fencing", "Surfing")
# Overrides that change the parameter shapes: a later command must not need them again.
TRAINED = ["--config.model.hidden_size=32", "--config.model.mlp_dim=48",
           "--config.model.patch_size=(12,12,2)"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny Dk-ViViT trained with shape-changing overrides on a 6-class UCF101 folder."""
  tmp = tmp_path_factory.mktemp("run_config")
  layout = video_fixtures.write_ucf101(str(tmp / "ucf"), classes=CLASSES, train_per_class=2,
                                       test_per_class=1, num_frames=12)
  cfg = tmp / "ucf_tiny.py"
  write_folder_config(cfg, layout.root)
  work = tmp / "run"
  run_python(["-m", "vivit_knn.main", f"--config={cfg}", f"--workdir={work}",
              "--config.train.num_train_steps=2", "--config.train.global_batch_size=4",
              "--config.eval.global_batch_size=4", "--config.train.eval_at_end=False",
              "--config.optimizer.warmup_steps=0"] + TRAINED)
  return layout, cfg, work


def _main(trained, *args):
  _, cfg, work = trained
  return run_python(["-m", "vivit_knn.main", f"--config={cfg}", f"--workdir={work}", *args],
                    check=False)


def test_training_stores_its_resolved_config(trained):
  work = trained[2]
  data = json.loads((work / run_config.RUN_CONFIG).read_text())  # plain, readable JSON
  assert data["config"]["model"]["hidden_size"] == 32
  assert data["config"]["model"]["patch_size"] == [12, 12, 2]
  stored = run_config.load_run_config(str(work))
  assert stored.model.patch_size == (12, 12, 2) and stored.train.num_train_steps == 2
  assert stored.dataset.name == "ucf101" and stored.optimizer.warmup_steps == 0
  assert run_config.load_run_config(str(work / "nothing_here")) is None


def test_every_config_loads_back_exactly():
  def kinds(x):
    if isinstance(x, dict):
      return {k: kinds(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return (type(x).__name__, [kinds(v) for v in x])
    return (type(x).__name__, x)

  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs",
                                                                          "*.py")))
  assert len(names) > 10
  for name in names:
    config = load_config(name)
    back = run_config.config_from_json(run_config.config_to_json(config))
    assert kinds(back.to_dict()) == kinds(config.to_dict()), name


def test_eval_with_the_bare_config_uses_the_trained_shapes(trained):
  # The workdir's schedule (2 steps) would have refused any warmup: eval must not care.
  proc = _main(trained, "--mode=eval", "--config.eval.global_batch_size=2",
               "--config.optimizer.warmup_steps=5")
  assert proc.returncode == 0, proc.stderr
  assert "checkpoint step 2" in proc.stdout
  assert "overall accuracy" in proc.stdout
  note = proc.stdout.splitlines()[0]
  assert note.startswith("using the run's stored config")
  assert "model.hidden_size (file: 16, stored: 32)" in note
  assert "eval.global_batch_size" not in note  # an override, applied


def test_infer_with_the_bare_config_uses_the_trained_shapes(trained):
  layout = trained[0]
  proc = _main(trained, "--mode=infer", f"--video={layout.root}/{layout.test[0]}")
  assert proc.returncode == 0, proc.stderr
  rows = re.findall(r"^(\d)\. (\S+)\s+([0-9.]+)$", proc.stdout, flags=re.M)
  assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
  assert {r[1] for r in rows} <= set(CLASSES)


def test_a_shape_changing_override_is_refused_in_one_line(trained):
  proc = _main(trained, "--mode=eval", "--config.model.hidden_size=16",
               "--config.dataset.num_frames=6", "--config.model.dropout_rate=0.2")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert "model.hidden_size: 32 -> 16 (parameter shapes)" in lines[0]
  assert "dataset.num_frames: 4 -> 6 (data layout)" in lines[0]
  assert "dropout_rate" not in lines[0]  # does not change a shape
