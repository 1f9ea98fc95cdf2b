"""CAST-B/16 on Something-Something v2, 16x224x224: the paper's recipe.

As `k400_cast.py` (frozen CLIP + VideoMAE experts, about 45M trainable
parameters) with SSv2's schedule: 50 epochs, drop path 0.3, 2 clips x 3 crops at
test time. VideoMAE samples SSv2 uniformly over the whole video; the TFRecord
reader takes 16 frames every `frame_stride` = 2 instead.
"""

from vivit_knn.config import base_config
from vivit_knn.models.cast import TRAINABLE_PATTERNS
from vivit_knn.presets import set_dataset

SSV2_TRAIN_SIZE = 168_913
SSV2_CLASSES = 174
EPOCHS, WARMUP_EPOCHS = 50, 5


def get_config():
  """CAST-B/16 (12 layers, B-CAST width 384, adapters 192) with one 174-way head."""
  config = base_config()
  m = config.model
  m.name = "cast"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 768, 12, 3072, 12
  m.patch_size = (16, 16, 2)
  m.attention.kind = "dense"
  m.cast.cross_dim, m.cast.adapter_dim, m.cast.mlp_adapter_scale = 384, 192, 0.5
  m.stochastic_depth = 0.3

  config.train.global_batch_size = 64
  config.train.num_train_steps = 0
  config.train.num_epochs = float(EPOCHS)
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.eval.global_batch_size = 64

  o = config.optimizer
  o.name = "adamw"
  o.base_learning_rate = 1e-3 * config.train.global_batch_size / 256
  o.end_learning_rate = 1e-6 * config.train.global_batch_size / 256
  o.weight_decay = 0.05
  o.grad_clip_norm = 0.0
  o.trainable_patterns = TRAINABLE_PATTERNS
  o.layer_decay = 0.75
  config.loss.label_smoothing = 0.1
  config.loss.mixup_alpha = 0.8

  set_dataset(config, "tfrecord", SSV2_TRAIN_SIZE)
  d = config.dataset
  d.num_classes = SSV2_CLASSES
  d.num_train = SSV2_TRAIN_SIZE
  d.num_frames, d.frame_stride, d.image_size = 16, 2, 224
  d.random_flip = False  # left/right matter in SSv2's labels
  d.normalization = "imagenet"
  d.num_test_clips, d.num_test_crops = 2, 3
  o.warmup_steps = WARMUP_EPOCHS * SSV2_TRAIN_SIZE // config.train.global_batch_size
  config.experiment_name = "ssv2_cast"
  return config
