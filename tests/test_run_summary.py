"""Schedules in epochs become steps from the real data; the run summary states what a run does."""

import json
import math

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.events import read_scalars
from tests.tiny import load_config, run_python
from vivit_knn.train.experiment import build_experiment

TINY = ["-m", "vivit_knn.main", "--config=configs/synthetic_tiny.py"]
NUM_TRAIN, BATCH, STEPS, WARMUP_EPOCHS = 24, 8, 10, 2.5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """synthetic_tiny, 24 train clips at batch 8 (3 steps an epoch), warmup 2.5 epochs."""
  work = tmp_path_factory.mktemp("summary") / "run"
  proc = run_python(TINY + [
      f"--workdir={work}", f"--config.dataset.num_train={NUM_TRAIN}",
      f"--config.train.global_batch_size={BATCH}", f"--config.train.num_train_steps={STEPS}",
      "--config.optimizer.warmup_steps=0", f"--config.optimizer.warmup_epochs={WARMUP_EPOCHS}",
      "--config.train.eval_at_end=False", f"--config.train.checkpoint_every_steps={STEPS}"])
  return work, proc.stdout


def _lr(step, base, warmup, total):
  """The reference schedule: linear warmup, then half a cosine to 0."""
  if step < warmup:
    return base * step / warmup
  return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _matmul_gflops(cfg, clip, num_classes):
  """Multiply-adds of the factorised encoder's matmuls and patch embedding, by hand."""
  t, h, w, c = clip
  ph, pw, pt = cfg.patch_size
  d, mlp = cfg.hidden_size, cfg.mlp_dim
  nt, ns = t // pt, (h // ph) * (w // pw)

  def block(n):
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * mlp

  spatial = nt * cfg.spatial_transformer.num_layers * block(ns + 1)
  temporal = cfg.temporal_transformer.num_layers * block(nt + 1)
  embed = nt * ns * (pt * ph * pw * c) * d
  return (spatial + temporal + embed + d * num_classes) / 1e9


def test_warmup_in_epochs_becomes_steps_and_the_summary_says_so(run):
  work, out = run
  summary = json.loads((work / "run_summary.json").read_text())
  per_epoch = NUM_TRAIN / BATCH
  warmup = math.ceil(WARMUP_EPOCHS * per_epoch)  # 8
  assert summary["steps_per_epoch"] == per_epoch
  assert (summary["total_steps"], summary["warmup_steps"]) == (STEPS, warmup)
  assert summary["warmup_steps_from"] == "2.5 epochs"
  assert summary["splits"]["train"]["listed"] == NUM_TRAIN
  assert summary["splits"]["eval"]["listed"] == 32
  assert summary["devices"]["count"] >= 1 and summary["mesh"]["data"] >= 1
  assert f"warmup steps     {warmup} (2.5 epochs)" in out
  assert "run summary: synthetic_tiny" in out and "GFLOPs per clip" in out

  # The optimiser follows that warmup: the logged rate (mean over each 2-step window).
  base = load_config("synthetic_tiny").optimizer.base_learning_rate
  logged = dict(read_scalars(str(work / "train"))["train/learning_rate"])
  for done, value in logged.items():
    expected = np.mean([_lr(s, base, warmup, STEPS) for s in (done - 2, done - 1)])
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-8), done

  # Step time and throughput are logged with the metrics once a step past compilation is timed.
  scalars = read_scalars(str(work / "train"))
  times, rates = dict(scalars["train/step_time_s"]), dict(scalars["train/clips_per_s"])
  assert sorted(times) == sorted(rates) and set(times) >= {4, 6, 8, 10}
  for done in times:
    assert times[done] > 0 and rates[done] * times[done] == pytest.approx(BATCH, rel=1e-4)


def test_summary_counts_parameters_and_gflops(run):
  work, _ = run
  summary = json.loads((work / "run_summary.json").read_text())
  stored = ocp.StandardCheckpointer().restore(work / "checkpoints" / str(STEPS) / "default")
  leaves = [np.asarray(x) for x in jax.tree.leaves(stored["params"])]
  assert summary["params"] == sum(x.size for x in leaves)
  config = load_config("synthetic_tiny")
  matmuls = _matmul_gflops(config.model, summary["input_shape"], 4)
  # XLA also counts element-wise work (norms, softmax, GELU), large next to D=16 matmuls.
  assert matmuls <= summary["gflops_per_clip"] <= 3 * matmuls


@pytest.mark.parametrize("num_train, expected", [(64, 20), (100, 32)])
def test_warmup_epochs_follow_the_dataset_size(num_train, expected):
  config = load_config("synthetic_tiny")
  config.dataset.num_train = num_train
  config.optimizer.warmup_steps = 0
  config.optimizer.warmup_epochs = 2.5
  config.train.num_train_steps = 100
  exp = build_experiment(config)
  assert exp.plan.warmup_steps == expected  # ceil(2.5 * num_train / 8)
  base = config.optimizer.base_learning_rate
  assert float(exp.schedule(expected - 1)) == pytest.approx(base * (expected - 1) / expected)
  assert float(exp.schedule(expected)) == pytest.approx(base)


def test_schedule_errors_show_the_effective_numbers():
  config = load_config("synthetic_tiny")
  config.optimizer.warmup_steps = 0
  config.optimizer.warmup_epochs = 2.5
  config.train.num_train_steps = 12
  with pytest.raises(ValueError, match=r"warmup \(2\.5 epochs = 20 steps\) must be smaller than "
                                       r"the total steps \(12, train\.num_train_steps\)"):
    build_experiment(config)
  exp = build_experiment(config, training=False)  # eval and infer never fail on it
  assert exp.plan.warmup_steps == 0
  config.optimizer.warmup_steps = 3
  with pytest.raises(ValueError, match="optimizer.warmup_steps=3 and optimizer.warmup_epochs"):
    build_experiment(config)


def test_knn_presets_give_warmup_in_epochs():
  for name in ("ucf101_dk", "hmdb51_uk"):
    config = load_config(name)
    assert (config.optimizer.warmup_epochs, config.optimizer.warmup_steps) == (2.5, 0)
