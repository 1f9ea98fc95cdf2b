"""model_stats on every config, and the README's cost table: B/16 models within 5% of the papers."""

import glob
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from tests.tiny import ROOT, load_config, run_python
from vivit_knn.models.registry import build_model
from vivit_knn.tools.model_stats import TABLE_ROWS, check_config, dataset_classes
from vivit_knn.train.model_cost import clip_shape

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _readme_table():
  text = (Path(ROOT) / "README.md").read_text()
  section = text.split("## Model families and their cost")[1].split("\n## ")[0]
  return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_readme_table_is_the_table_command_and_within_5_percent_of_published():
  """`model_stats --table` prints the README's table; measured figures match the papers."""
  out = run_python(["-m", "vivit_knn.tools.model_stats", "--table"]).stdout.strip()
  assert out == _readme_table()
  rows = [line.split(" | ") for line in out.splitlines()[2:]]
  assert len(rows) == len(TABLE_ROWS) == 5
  for cells in rows:
    measured, published = float(cells[1]), float(cells[2].split()[0])
    assert measured == pytest.approx(published, rel=0.05), cells[0]
    if cells[4].strip(" |"):
      assert float(cells[3].split()[0]) == pytest.approx(float(cells[4].split()[0]), rel=0.05)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_is_checked_and_builds_without_its_dataset(name):
  """What model_stats needs of each config, at 2x2 patches: checks pass, classes, the model."""
  config = load_config(name)
  config.dataset.image_size = 2 * config.model.patch_size[0]
  check_config(config)
  num_classes = dataset_classes(config)
  assert num_classes == {"ucf101": 101, "hmdb51": 51}.get(config.dataset.name, num_classes) >= 2
  model = build_model(config.model, num_classes)
  shape = (1,) + clip_shape(config)
  logits = jax.eval_shape(lambda: model.apply(
      model.init(jax.random.key(0), jnp.zeros(shape)), jnp.zeros(shape), train=False)[0])
  assert logits.shape == (1, num_classes)


def _stats(*args):
  return run_python(["-m", "vivit_knn.tools.model_stats", *args], check=False)


@pytest.mark.parametrize("name, classes", [("ucf101_dk", "101"), ("hmdb51_uk", "51"),
                                           ("ek100_cast", "97 verbs x 300 nouns")])
def test_cli_on_configs_of_data_on_disk_and_two_heads(name, classes):
  proc = _stats(f"--config=configs/{name}.py", "--config.dataset.image_size=32",
                "--config.dataset.num_frames=4")
  assert proc.returncode == 0, proc.stderr
  assert f"clip: 4x32x32  classes: {classes}\n" in proc.stdout


def test_cli_runs_mains_config_checks():
  proc = _stats("--config=configs/synthetic_tiny.py", "--config.dataset.image_size=30")
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert "model.patch_size" in lines[0] and "30" in lines[0]


def test_cli_prints_significant_digits_of_a_tiny_model():
  out = _stats("--config=configs/synthetic_tiny.py").stdout
  gflops = float(out.split("GFLOPs (multiply-adds):")[1].split()[0])
  assert 1e-5 < gflops < 1e-3
  params = int(out.split("params: ")[1].split()[0].replace(",", ""))
  assert 1_000 < params < 100_000


def test_cli_prints_params_and_gflops_with_overrides():
  out = run_python(["-m", "vivit_knn.tools.model_stats", "--config=configs/k400_timesformer.py",
                    "--config.dataset.num_frames=4"]).stdout
  assert "clip: 4x224x224" in out and "classes: 400" in out
  assert "params: 121,563,280 (121.56 M)" in out  # 4 fewer time_embed rows (x 768) than at 8 frames
  gflops = float(out.split("GFLOPs (multiply-adds):")[1].split()[0])
  assert gflops == pytest.approx(196.5 / 2, rel=0.03)


def test_clip_shape_reads_the_dataset():
  assert clip_shape(load_config("k400_xvit")) == (8, 224, 224, 3)
