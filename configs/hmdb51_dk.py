"""Dk-ViViT/16x2 (factorised encoder Ls=8, Lt=4, k-NN in both encoders) on HMDB51 split 1.

Recipe, and its deviations from the paper: `vivit_knn.presets.vivit_b16x2`. Needs
--config.dataset.data_dir and --config.init_from.checkpoint_path (a Kinetics-400
ViViT-B/16x2 FE checkpoint).
"""

from vivit_knn.presets import set_dataset, vivit_b16x2


def get_config():
  """Dk-ViViT/16x2 (factorised encoder Ls=8, Lt=4, k-NN in both encoders)."""
  config = vivit_b16x2("factorized_encoder", knn_spatial=True, knn_temporal=True)
  set_dataset(config, "hmdb51")
  config.experiment_name = "hmdb51_dk"
  return config
