"""Tiny CAST on the built-in synthetic motion task (seconds per hundred steps on a CPU).

Both experts are tiny, randomly initialised and frozen, as in the paper's recipe
with pretrained ones: only the B-CAST blocks, the adapters, `ln_post`, `fc_norm`
and the head train. `--config.optimizer.trainable_patterns='()'` trains
everything instead.
"""

from vivit_knn.config import base_config
from vivit_knn.models.cast import TRAINABLE_PATTERNS


def get_config():
  """Two-layer CAST (width 32, cross 32, adapters 16) on 8x32x32 clips, 2x8x8 tubelets."""
  config = base_config()
  config.experiment_name = "synthetic_cast"
  config.dataset.num_frames = 8
  config.dataset.image_size = 32
  config.dataset.num_train = 2048
  config.dataset.num_eval = 512

  m = config.model
  m.name = "cast"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 32, 4, 64, 2
  m.patch_size = (8, 8, 2)
  m.attention.kind = "dense"
  m.cast.cross_dim = 32
  m.cast.adapter_dim = 16

  config.optimizer.name = "adamw"
  config.optimizer.base_learning_rate = 3e-3
  config.optimizer.warmup_steps = 30
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.trainable_patterns = TRAINABLE_PATTERNS

  config.train.global_batch_size = 32
  config.train.num_train_steps = 400
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 10_000
  config.eval.global_batch_size = 64
  return config
