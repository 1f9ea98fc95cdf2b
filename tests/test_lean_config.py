"""A config is checked once, by `config.validate`, before anything is built; no TensorFlow for it."""

import os

import pytest

from tests.tiny import load_config, run_python, tiny_config
from vivit_knn import config as config_lib
from vivit_knn.data.registry import DATASET_DEFAULTS
from vivit_knn.models import registry as model_registry
from vivit_knn.train import experiment


def test_a_key_the_factorised_encoder_never_reads_stops_the_command_line(tmp_path):
  work = tmp_path / "run"
  proc = run_python(["-m", "vivit_knn.main", "--config=configs/ucf101_dk.py", f"--workdir={work}",
                     "--config.model.attention.knn_k=0.5"], check=False, timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  line = lines[0]
  assert line.startswith("error: model.attention.knn_k=0.5 cannot take effect"), line
  assert ("model.spatial_transformer.attention.knn_k or "
          "model.temporal_transformer.attention.knn_k") in line, line
  assert "factorized_encoder" in line, line
  # Refused before the run starts: no checkpoint, stored config, run info or logs. The
  # trainer takes its workdir lock (`train.lock`) before it builds the run's parts.
  assert not work.exists() or sorted(os.listdir(work)) == ["train.lock"], os.listdir(work)


def test_loading_and_checking_a_config_does_not_import_tensorflow():
  code = "\n".join([
      "import importlib.util, sys",
      "import vivit_knn.config as config_lib",
      "assert 'tensorflow' not in sys.modules, 'import vivit_knn.config'",
      "for name in ('ucf101_dk', 'synthetic_dk', 'k400_timesformer'):",
      "  spec = importlib.util.spec_from_file_location(name, f'configs/{name}.py')",
      "  module = importlib.util.module_from_spec(spec)",
      "  spec.loader.exec_module(module)",
      "  config = module.get_config()",
      "  config.init_from.required = False",
      "  config_lib.validate(config)",
      "assert 'tensorflow' not in sys.modules, 'loading and validating configs'",
      "print('no tensorflow')",
  ])
  proc = run_python(code, timeout=300)
  assert proc.stdout.strip() == "no tensorflow", proc.stdout


def _counting(monkeypatch, module, name, calls):
  original = getattr(module, name)

  def counted(*args, **kwargs):
    calls[name] = calls.get(name, 0) + 1
    return original(*args, **kwargs)

  monkeypatch.setattr(module, name, counted)


def test_building_a_run_checks_each_part_of_its_config_once(monkeypatch):
  calls = {}
  for name in ("check_keys", "check_init_from", "check_training", "check_inactive_keys"):
    _counting(monkeypatch, config_lib, name, calls)
  _counting(monkeypatch, model_registry, "check", calls)
  exp = experiment.build_experiment(tiny_config(), training=False)
  assert exp.dataset.info.input_shape == (4, 24, 24, 3)
  assert calls == {"check_keys": 1, "check_init_from": 1, "check_training": 1,
                   "check_inactive_keys": 1, "check": 1}


def test_a_config_error_comes_before_the_data(tmp_path):
  config = tiny_config()
  config.dataset = DATASET_DEFAULTS["ucf101"]()
  config.dataset.update(data_dir=str(tmp_path / "nowhere"), num_frames=4, image_size=24)
  config.model.num_layers = 3
  # The data_dir does not exist, but the model block is wrong first.
  with pytest.raises(ValueError, match=r"^model\.num_layers=3 cannot take effect"):
    experiment.build_experiment(config, training=False)


@pytest.mark.parametrize("name,key", [
    ("synthetic_timesformer", "spatial_transformer"),
    ("synthetic_xvit", "temporal_transformer"),
    ("ucf101_uk", "spatial_transformer"),
    ("ucf101_vivit_st", "temporal_transformer"),
])
def test_a_factorised_encoder_key_on_a_one_encoder_model_is_refused(name, key):
  config = load_config(name)
  config.init_from.required = False
  config_lib.validate(config)  # as shipped: accepted
  config.model[key].num_layers = 3
  with pytest.raises(ValueError, match=rf"^model\.{key}\.num_layers=3 cannot take effect"):
    config_lib.validate(config)
