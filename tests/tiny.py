"""Small configs and subprocess helpers the tests share."""

import importlib.util
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(model_type="factorized_encoder", knn=True, **train):
  """`configs/synthetic_tiny.py` with another model type / dense attention / train overrides.

  The layouts with one encoder get 2 layers (k-NN attention with k = 2n/3 unless
  `knn=False`). Evaluation at the end is off unless asked for.
  """
  config = load_config("synthetic_tiny")
  m = config.model
  m.model_type = model_type
  if not knn:
    for block in (m.spatial_transformer.attention, m.temporal_transformer.attention):
      block.kind = "dense"
  if model_type != "factorized_encoder":
    m.num_layers = 2
    m.attention.kind = "knn" if knn else "dense"
    # One encoder: the factorised encoder's own keys go back to their defaults (set, they
    # are refused as keys that cannot take effect).
    from vivit_knn.config import base_config  # pylint: disable=g-import-not-at-top
    schema = base_config().model
    m.spatial_transformer = schema.spatial_transformer
    m.temporal_transformer = schema.temporal_transformer
  m.classifier = "token" if model_type in ("spacetime", "factorized_encoder") else "gap"
  config.train.eval_at_end = False
  for k, v in train.items():
    config.train[k] = v
  return config


def load_config(name):
  """Runs `configs/<name>.py`'s get_config()."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def run_python(code_or_args, env_extra=None, timeout=600, check=True):
  """Runs `python -c code` (str) or `python args...` (list) from the repo root; returns the result."""
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update(env_extra or {})
  args = ["-c", code_or_args] if isinstance(code_or_args, str) else list(code_or_args)
  proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def write_folder_config(path, data_dir, fields=None):
  """Writes a config file: `synthetic_tiny`'s model on a UCF101-layout video folder.

  4 frames of 24x24; `fields` maps extra dotted keys to values written into the
  file, e.g. `{"train.num_train_steps": 3}`.
  """
  lines = ["from vivit_knn.data.registry import DATASET_DEFAULTS",
           "from tests.tiny import load_config",
           "def get_config():",
           "  config = load_config('synthetic_tiny')",
           "  config.dataset = DATASET_DEFAULTS['ucf101']()",
           f"  config.dataset.data_dir = {str(data_dir)!r}",
           "  config.dataset.format = 'folder'",
           "  config.dataset.num_frames = 4",
           "  config.dataset.image_size = 24"]
  lines += [f"  config.{key} = {value!r}" for key, value in (fields or {}).items()]
  lines.append("  return config")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path
