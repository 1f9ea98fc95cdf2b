"""Tiny TimeSformer (divided space-time attention) on the built-in synthetic motion task.

The labels need frame order. `--config.model.attention_type=space_only` is the
control: frames are encoded separately and averaged, so it stays near chance (25%).

Clips are 8x24x24, so the square moves 3 px per frame across 8-px patches. (At
32x32 it moves 4 px, half a patch: a move of +4 and one of -4 then look alike
within every patch, and single-frame-patch models take far longer to learn.)
The model trains from scratch, so the time embedding starts as unit-scale noise
and `temporal_fc` with the usual Dense init; the paper's zeros (its image-model
start) leave a random model blind to frame order at first, which costs hundreds
of steps here (see vivit_knn/models/timesformer.py).
"""

from vivit_knn.config import attention_config, base_config


def get_config():
  """TimeSformer with 2 divided blocks at 8x24x24 (8x8 patches), trained from scratch."""
  config = base_config()
  config.experiment_name = "synthetic_timesformer"
  config.dataset.num_frames = 8
  config.dataset.image_size = 24
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
  m.time_embed_init_std = 1.0
  m.temporal_fc_zero_init = False

  config.optimizer.name = "adamw"
  config.optimizer.base_learning_rate = 2e-3
  config.optimizer.warmup_steps = 30
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 1.0

  config.train.global_batch_size = 32
  config.train.num_train_steps = 300
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 300
  config.eval.global_batch_size = 128
  return config
