"""Dk-ViViT-S (k-NN only in the spatial encoder) on UCF101 split 1.

Recipe, and its deviations from the paper: `vivit_knn.presets.vivit_b16x2`. Needs
--config.dataset.data_dir and --config.init_from.checkpoint_path (a Kinetics-400
ViViT-B/16x2 FE checkpoint).
"""

from vivit_knn.presets import set_dataset, vivit_b16x2


def get_config():
  """Dk-ViViT-S (k-NN only in the spatial encoder)."""
  config = vivit_b16x2("factorized_encoder", knn_spatial=True, knn_temporal=False)
  set_dataset(config, "ucf101")
  config.experiment_name = "ucf101_dk_s"
  return config
