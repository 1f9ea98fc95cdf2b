"""A tiny CAST learns the synthetic temporal task through the one trainer."""

import time

import pytest

from tests.tiny import load_config
from vivit_knn.train import trainer


@pytest.mark.slow
def test_tiny_cast_learns_temporal_order(tmp_path):
  config = load_config("synthetic_cast")  # random tiny experts, so everything trains
  start = time.time()
  result = trainer.train(config, str(tmp_path / "cast"))["eval"]
  print(f"synthetic CAST held-out top1 {result['top1']:.3f} in {time.time() - start:.0f}s")
  assert result["num_examples"] == 512
  assert result["top1"] >= 0.90
