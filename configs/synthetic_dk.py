"""Tiny Dk-ViViT on the built-in synthetic motion task (no downloads; the README's default run).

Each clip shows a square moving left/right, then (at a fresh place) up/down; the
4 labels need frame order. Shuffling frames (`--config.dataset.shuffle_frames=True`)
removes that information: the control run should sit near chance (25%).
"""

from vivit_knn.config import attention_config
from vivit_knn.presets import synthetic_run


def get_config():
  """Dk-ViViT (k-NN attention in both encoders, k = 2n/3) at 8x32x32."""
  config = synthetic_run("synthetic_dk", image_size=32, learning_rate=1e-3,
                         num_train_steps=300, checkpoint_every_steps=100)

  m = config.model
  m.model_type = "factorized_encoder"
  m.hidden_size = 64
  m.num_heads = 4
  m.mlp_dim = 128
  m.patch_size = (8, 8, 2)
  m.spatial_transformer.num_layers = 2
  m.temporal_transformer.num_layers = 2
  m.spatial_transformer.attention = attention_config("knn", 2 / 3)
  m.temporal_transformer.attention = attention_config("knn", 2 / 3)
  m.classifier = "token"
  return config
