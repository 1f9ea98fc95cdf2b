"""CAST-B/16 on Kinetics-400, 16x224x224: the paper's recipe.

Experts: CLIP ViT-B/16 (spatial, frames 1, 3, ..., 15) and VideoMAE ViT-B
(temporal, 2x16x16 tubelets), both frozen; B-CAST blocks, adapters, ln_post,
fc_norm and the head train (about 45M parameters). Their weights come from
`vivit_knn.weights.clip.convert_clip` / `vivit_knn.weights.videomae.convert_videomae`
placed with `vivit_knn.models.cast.merge_expert_params`.
Data: DMVR-format TFRecords (`--config.dataset.data_dir=<dir>`), 16 frames every 4,
ImageNet mean/std as in the public code. Optimiser: AdamW, lr 1e-3 per 256 clips,
weight decay 0.05, layer decay 0.75, 5 warmup epochs of 70, drop path 0.2,
label smoothing 0.1, mixup 0.8 (the trainer mixes every batch; the paper did half).
"""

from vivit_knn.config import base_config
from vivit_knn.models.cast import TRAINABLE_PATTERNS
from vivit_knn.presets import set_dataset

K400_TRAIN_SIZE = 234_584  # the paper's videos still online; adjust to your copy
EPOCHS, WARMUP_EPOCHS = 70, 5


def get_config():
  """CAST-B/16 (12 layers, B-CAST width 384, adapters 192) with one 400-way head."""
  config = base_config()
  m = config.model
  m.name = "cast"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 768, 12, 3072, 12
  m.patch_size = (16, 16, 2)
  m.attention.kind = "dense"
  m.cast.cross_dim, m.cast.adapter_dim, m.cast.mlp_adapter_scale = 384, 192, 0.5
  m.stochastic_depth = 0.2

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

  set_dataset(config, "tfrecord", K400_TRAIN_SIZE)
  d = config.dataset
  d.num_classes = 400
  d.num_train = K400_TRAIN_SIZE
  d.num_frames, d.frame_stride, d.image_size = 16, 4, 224
  d.normalization = "imagenet"
  d.num_test_clips, d.num_test_crops = 5, 3
  o.warmup_steps = WARMUP_EPOCHS * K400_TRAIN_SIZE // config.train.global_batch_size
  config.experiment_name = "k400_cast"
  return config
