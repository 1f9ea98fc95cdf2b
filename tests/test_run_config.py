"""A run is a record: training stores its config; eval and infer reuse it with their overrides."""

import glob
import json
import os
import re

import pytest

from tests import video_fixtures
from tests.tiny import ROOT, load_config, run_python, write_folder_config
from vivit_knn.data.registry import DATASET_DEFAULTS
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


def test_every_config_loads_back_exactly(tmp_path):
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
    run_config.save_run_config(str(tmp_path / name), config)
    back = run_config.load_run_config(str(tmp_path / name))
    assert kinds(back.to_dict()) == kinds(config.to_dict()), name


def test_eval_with_the_bare_config_uses_the_trained_shapes(trained):
  # The workdir's schedule (2 steps) would have refused any warmup: eval must not care.
  # A field outside the allowed overrides may be given at its stored value.
  proc = _main(trained, "--mode=eval", "--config.eval.global_batch_size=2",
               "--config.optimizer.warmup_steps=5", "--config.model.mlp_dim=48")
  assert proc.returncode == 0, proc.stderr
  assert "checkpoint step 2" in proc.stdout
  assert "overall accuracy" in proc.stdout
  note = proc.stdout.splitlines()[0]
  assert note.startswith("using the run's stored config")
  assert "learning-rate schedule" not in proc.stdout  # an eval has none
  listed = (trained[2] / "config_not_used.txt").read_text()
  assert "model.hidden_size: file 16, stored 32\n" in listed
  assert "eval.global_batch_size" not in listed  # an override, applied
  assert "model.mlp_dim" not in listed  # given at its stored value: not a file value


def test_infer_with_the_bare_config_uses_the_trained_shapes(trained):
  layout = trained[0]
  proc = _main(trained, "--mode=infer", f"--video={layout.root}/{layout.test[0]}")
  assert proc.returncode == 0, proc.stderr
  rows = re.findall(r"^(\d)\. (\S+)\s+([0-9.]+)$", proc.stdout, flags=re.M)
  assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
  assert {r[1] for r in rows} <= set(CLASSES)


def test_an_override_outside_the_allowed_list_is_refused_in_one_line(trained):
  proc = _main(trained, "--mode=eval", "--config.model.hidden_size=16",
               "--config.dataset.num_frames=6", "--config.model.dropout_rate=0.2",
               "--config.dataset.num_test_clips=2")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"error: these overrides change the run trained in {trained[2]}: ")
  assert "model.hidden_size: 32 -> 16; " in lines[0]
  assert "dataset.num_frames: 4 -> 6; " in lines[0]
  assert "model.dropout_rate: 0.0 -> 0.2. Drop them" in lines[0]
  assert "num_test_clips: " not in lines[0]  # allowed
  assert "overrides of dataset.num_test_clips, dataset.num_test_crops, eval.*," in lines[0]


def _stored(tmp_path, changes=None):
  """A workdir whose config.json is `synthetic_tiny` with the dotted `changes`."""
  config = load_config("synthetic_tiny")
  config.update_from_flattened_dict(changes or {})
  run_config.save_run_config(str(tmp_path), config)
  return str(tmp_path)


def _resolve(workdir, overrides, **kwargs):
  """`resolve_run_config` for `synthetic_tiny` plus the dotted `overrides` given on a command line."""
  config = load_config("synthetic_tiny")
  config.update_from_flattened_dict(overrides)
  return run_config.resolve_run_config(config, workdir, overridden=list(overrides),
                                       training=True, **kwargs)


def test_allowed_overrides_apply_and_the_stored_config_wins_over_the_file(tmp_path, capsys):
  work = _stored(tmp_path, {"model.hidden_size": 32, "train.num_train_steps": 2})
  config = _resolve(work, {"model.spatial_transformer.attention.knn_k": 0.5,
                           "dataset.num_test_clips": 3, "optimizer.base_learning_rate": 0.01,
                           "train.num_train_steps": 6, "mesh.fsdp": 2,
                           "model.num_heads": 2})  # not allowed, but the stored value
  assert config.model.spatial_transformer.attention.knn_k == 0.5
  assert config.model.temporal_transformer.attention.knn_k == 2 / 3
  assert (config.dataset.num_test_clips, config.optimizer.base_learning_rate) == (3, 0.01)
  assert (config.train.num_train_steps, config.mesh.fsdp) == (6, 2)
  assert config.model.hidden_size == 32 and config.is_locked
  notes = capsys.readouterr().out.strip().splitlines()
  assert notes == [
      "the learning-rate schedule changes with optimizer.base_learning_rate (0.05 -> 0.01), "
      "train.num_train_steps (2 -> 6)",
      f"using the run's stored config {work}/config.json: 1 value(s) of the --config file "
      f"differ and are not used (see {work}/config_not_used.txt)"]
  assert (tmp_path / "config_not_used.txt").read_text() == (
      "model.hidden_size: file 16, stored 32\n")
  # An eval with --output_dir lists them there, and writes nothing in the run folder.
  (tmp_path / "config_not_used.txt").unlink()
  _resolve(work, {}, notes_dir=str(tmp_path / "reports"))
  assert (tmp_path / "reports" / "config_not_used.txt").is_file()
  assert not (tmp_path / "config_not_used.txt").exists()


def test_refused_overrides_name_each_field_with_both_values(tmp_path):
  work = _stored(tmp_path)
  with pytest.raises(ValueError) as err:
    _resolve(work, {"train.global_batch_size": 4, "model.dropout_rate": 0.1,
                    "eval.global_batch_size": 4, "seed": 0})
  message = str(err.value)
  assert "\n" not in message
  assert ": train.global_batch_size: 8 -> 4; model.dropout_rate: 0.0 -> 0.1. Drop them" in message
  with pytest.raises(ValueError, match=r"--config.dataset.data_dir: the run's stored config "
                     r".* has no field dataset.data_dir \(it was trained with "
                     r"dataset.name='synthetic'\)"):
    other = load_config("synthetic_tiny")  # a --config file of a dataset with a data_dir
    other.dataset = DATASET_DEFAULTS["ucf101"]()
    run_config.resolve_run_config(other, work, overridden=["dataset.data_dir"])


def test_an_older_config_json_loads_on_todays_keys(tmp_path):
  work = _stored(tmp_path)
  path = tmp_path / run_config.RUN_CONFIG
  data = json.loads(path.read_text())
  del data["config"]["eval"]["save_logits"]  # a key added since
  data["config"]["train"]["removed_since"] = 1
  data["config"]["model"]["hidden_size"] = 32
  path.write_text(json.dumps(data))
  config = _resolve(work, {"eval.save_logits": True})
  assert config.eval.save_logits is True and config.model.hidden_size == 32
  assert "removed_since" not in config.train
  assert _resolve(work, {}).eval.save_logits is False  # the schema's default


def test_a_foreign_or_missing_config_json(tmp_path):
  (tmp_path / run_config.RUN_CONFIG).write_text('{"name": "another program"}')
  with pytest.raises(ValueError, match="holds no 'config' object"):
    _resolve(str(tmp_path), {})
  work = tmp_path / "run"
  (work / "checkpoints" / "4").mkdir(parents=True)
  with pytest.raises(ValueError, match="has checkpoints but no config.json.*--use_config_file"):
    _resolve(str(work), {}, use_config_file=False)
  assert _resolve(str(work), {"seed": 3}, use_config_file=True).seed == 3
