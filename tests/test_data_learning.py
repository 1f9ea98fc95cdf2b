"""Dk-ViViT learns the synthetic task read back from JPEG TFRecords."""

import pytest

from tests.tiny import load_config
from tests.video_fixtures import export_synthetic
from vivit_knn.data import registry
from vivit_knn.train import trainer


def record_dataset_config(data_dir):
  """The synthetic clips as stored: 8x32x32, no augmentation, one view."""
  cfg = registry.DATASET_DEFAULTS["tfrecord"]()
  cfg.data_dir = data_dir
  cfg.num_frames = 8
  cfg.frame_stride = 1
  cfg.image_size = 32
  cfg.min_resize = 32
  cfg.scale_jitter = (1.0, 1.0)
  cfg.random_flip = False  # Flipping swaps left and right: two labels.
  cfg.color_jitter = 0.0
  cfg.randaugment_num_layers = 0
  cfg.normalization = "zero_centered"
  cfg.num_test_clips = 1
  cfg.num_test_crops = 1
  return cfg


@pytest.mark.slow
def test_dk_vivit_learns_from_exported_tfrecords(tmp_path):
  meta = export_synthetic(str(tmp_path / "records"))
  assert meta["splits"]["train"]["num_examples"] == 2048
  config = load_config("synthetic_dk")
  config.dataset = record_dataset_config(str(tmp_path / "records"))
  config.train.checkpoint_every_steps = 10_000
  result = trainer.train(config, str(tmp_path / "run"))["eval"]
  print(f"held-out top1 from JPEG TFRecords: {result['top1']:.3f}")
  assert result["num_examples"] == 512
  assert result["top1"] >= 0.90
