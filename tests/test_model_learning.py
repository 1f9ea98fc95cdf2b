"""TimeSformer and X-ViT learn the synthetic temporal task; their space-only variants cannot.

The synthetic clips' unordered frames are identically distributed for every class,
so a model that never relates frames in order (TimeSformer `space_only`: frames
encoded apart and averaged; X-ViT `space_only`: no shift, no time embedding, a
permutation-invariant head) sits at chance whatever it learns. Both configs use
the task's two-class form (left/right across all frames; see their docstrings).
"""

import resource
import time

import pytest

from tests.tiny import load_config
from vivit_knn.train import trainer


def _train(tmp_path, name, attention_type=None):
  config = load_config(name)
  if attention_type:
    config.model.attention_type = attention_type
  config.train.checkpoint_every_steps = 10_000
  start, cpu = time.perf_counter(), _cpu_seconds()
  result = trainer.train(config, str(tmp_path / f"{name}_{attention_type}"))["eval"]
  return result, f"{time.perf_counter() - start:.0f} s, {_cpu_seconds() - cpu:.0f} CPU-s"


def _cpu_seconds():
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


@pytest.mark.slow
@pytest.mark.parametrize("name", ["synthetic_timesformer", "synthetic_xvit"])
def test_learns_frame_order_and_space_only_variant_does_not(tmp_path, name):
  result, seconds = _train(tmp_path, name)
  control, control_seconds = _train(tmp_path, name, "space_only")
  print(f"{name}: held-out top1 {result['top1']:.3f} ({seconds}); "
        f"space_only {control['top1']:.3f} ({control_seconds})")
  chance = 1 / load_config(name).dataset.num_classes
  assert result["num_examples"] == 512
  assert result["top1"] >= 0.90
  assert control["top1"] <= chance + 0.1
