"""Uk-ViViT/16x2 (unfactorised, L=12, k-NN attention) on HMDB51 split 1.

Recipe, and its deviations from the paper: `vivit_knn.presets.vivit_b16x2`. Needs
--config.dataset.data_dir and --config.init_from.checkpoint_path (a Kinetics-400
ViViT-B/16x2 unfactorised checkpoint).
"""

from vivit_knn.presets import set_dataset, vivit_b16x2


def get_config():
  """Uk-ViViT/16x2 (unfactorised, L=12, k-NN attention)."""
  config = vivit_b16x2("spacetime", knn_spatial=True, knn_temporal=True)
  set_dataset(config, "hmdb51")
  config.experiment_name = "hmdb51_uk"
  return config
