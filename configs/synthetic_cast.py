"""Tiny CAST on the built-in synthetic motion task (about two minutes on two CPU cores).

The two experts here are tiny and randomly initialised, i.e. not experts at all,
so unlike the paper (`k400_cast.py`) everything trains: with the experts frozen
(`--config.optimizer.trainable_patterns` set to `cast.TRAINABLE_PATTERNS`) the
cross-attention and adapters on top of random features stay at chance for
hundreds of steps. The architecture, heads and initialisation are the paper's.
"""

from vivit_knn.presets import synthetic_run


def get_config():
  """Two-layer CAST (width 64, B-CAST 32, adapters 16) on 8x32x32 clips, 2x8x8 tubelets."""
  # CAST's zero-initialised head adapters (a bottleneck in front of a small head) make
  # the start saddle-prone: runs can sit at one of the task's two binary factors for a
  # while. A batch of 64 and 350 steps got past it for every seed tried.
  config = synthetic_run("synthetic_cast", image_size=32, learning_rate=3e-3,
                         num_train_steps=350, checkpoint_every_steps=10_000,
                         global_batch_size=64)

  m = config.model
  m.name = "cast"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 64, 4, 128, 2
  m.patch_size = (8, 8, 2)
  m.attention.kind = "dense"
  m.cast.cross_dim = 32
  m.cast.adapter_dim = 16

  config.optimizer.trainable_patterns = ()
  # No CLIP/VideoMAE checkpoints for a width-64 model: random experts are intended here.
  config.init_from.required = False
  return config
