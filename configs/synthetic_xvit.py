"""Tiny X-ViT (space-time mixing, div 4) on the built-in synthetic motion task.

The labels need frame order. `--config.model.attention_type=space_only` is the
control: no shift and no time embedding, so frames are an unordered set for the
head and it stays near chance (25%).

Clips are 8x24x24, so the square moves 3 px per frame across 8-px patches (at
32x32 it moves 4 px, half a patch, and +4 and -4 look alike within a patch,
which hides the direction from the shifted keys and values).
"""

from vivit_knn.config import attention_config, base_config


def get_config():
  """X-ViT with 2 mixing blocks and a 1-block temporal head at 8x24x24 (8x8 patches)."""
  config = base_config()
  config.experiment_name = "synthetic_xvit"
  config.dataset.num_frames = 8
  config.dataset.image_size = 24
  config.dataset.num_train = 2048
  config.dataset.num_eval = 512

  m = config.model
  m.name = "xvit"
  m.attention_type = "space_time_mixing"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 96, 4, 192, 2
  m.patch_size = (8, 8, 1)
  m.xvit_div = 4
  m.head_layers = 1
  m.attention = attention_config("dense")
  m.temporal_attention = attention_config("dense")
  m.classifier = "token"
  m.time_embed_init_std = 0.02  # from scratch: like the position embedding

  config.optimizer.name = "adamw"
  config.optimizer.base_learning_rate = 1e-3
  config.optimizer.warmup_steps = 30
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 1.0

  config.train.global_batch_size = 32
  config.train.num_train_steps = 350
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 350
  config.eval.global_batch_size = 128
  return config
