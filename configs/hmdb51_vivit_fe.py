"""ViViT-B/16x2 factorised encoder baseline (dense attention) on HMDB51 split 1.

Recipe, and its deviations from the paper: `vivit_knn.presets.vivit_b16x2`. Needs
--config.dataset.data_dir and --config.init_from.checkpoint_path (a Kinetics-400
ViViT-B/16x2 FE checkpoint).
"""

from vivit_knn.presets import set_dataset, vivit_b16x2


def get_config():
  """ViViT-B/16x2 factorised encoder baseline (dense attention)."""
  config = vivit_b16x2("factorized_encoder", knn_spatial=False, knn_temporal=False)
  set_dataset(config, "hmdb51")
  config.experiment_name = "hmdb51_vivit_fe"
  return config
