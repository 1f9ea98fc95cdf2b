"""Tiny TimeSformer (divided space-time attention) on the built-in synthetic motion task.

The labels need frame order. `--config.model.attention_type=space_only` is the
control: frames are encoded separately and averaged, so it stays near chance (25%).
"""

from vivit_knn.config import attention_config, base_config


def get_config():
  """TimeSformer with 2 divided blocks at 8x32x32 (8x8 patches), trained from scratch."""
  config = base_config()
  config.experiment_name = "synthetic_timesformer"
  config.dataset.num_frames = 8
  config.dataset.image_size = 32
  config.dataset.num_train = 2048
  config.dataset.num_eval = 512

  m = config.model
  m.name = "timesformer"
  m.attention_type = "divided_space_time"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 64, 4, 128, 2
  m.patch_size = (8, 8, 1)
  m.attention = attention_config("dense")
  m.temporal_attention = attention_config("dense")
  m.classifier = "token"

  config.optimizer.name = "adamw"
  config.optimizer.base_learning_rate = 1e-3
  config.optimizer.warmup_steps = 30
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 1.0

  config.train.global_batch_size = 32
  config.train.num_train_steps = 300
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 300
  config.eval.global_batch_size = 128
  return config
