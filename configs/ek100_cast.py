"""CAST-B/16 on EPIC-Kitchens-100 actions, 16x224x224: two heads (noun: spatial, verb: temporal).

Labels: the TFRecords' `clip/label/index` must be the action `verb * 300 + noun`
over 97 x 300 = 29,100 classes (`vivit_knn.train.multihead.action_labels`). The
model's logits are the joint log-probabilities `log p(verb) + log p(noun)`, so
the trainer's cross-entropy is the sum of the verb and noun losses and its top-1
is the action accuracy (both correct). Otherwise as `k400_cast.py`: frozen
experts, about 45M trainable parameters, 50 epochs, drop path 0.2, 2 x 3 views.
"""

from vivit_knn.config import base_config
from vivit_knn.models.cast import TRAINABLE_PATTERNS
from vivit_knn.presets import set_dataset

EK100_TRAIN_SIZE = 67_217  # action segments in the train split
NUM_VERBS, NUM_NOUNS = 97, 300
EPOCHS, WARMUP_EPOCHS = 50, 5


def get_config():
  """CAST-B/16 with a 300-way noun head and a 97-way verb head."""
  config = base_config()
  m = config.model
  m.name = "cast"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 768, 12, 3072, 12
  m.patch_size = (16, 16, 2)
  m.attention.kind = "dense"
  m.cast.cross_dim, m.cast.adapter_dim, m.cast.mlp_adapter_scale = 384, 192, 0.5
  m.cast.num_verbs, m.cast.num_nouns = NUM_VERBS, NUM_NOUNS
  m.stochastic_depth = 0.2

  config.train.global_batch_size = 64
  config.train.num_train_steps = 0
  config.train.num_epochs = float(EPOCHS)
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.eval.global_batch_size = 64
  config.eval.confusion_matrix = False  # 29,100 classes

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

  set_dataset(config, "tfrecord", EK100_TRAIN_SIZE)
  d = config.dataset
  d.num_classes = NUM_VERBS * NUM_NOUNS
  d.num_train = EK100_TRAIN_SIZE
  d.num_frames, d.frame_stride, d.image_size = 16, 2, 224
  d.normalization = "imagenet"
  d.num_test_clips, d.num_test_crops = 2, 3
  o.warmup_steps = WARMUP_EPOCHS * EK100_TRAIN_SIZE // config.train.global_batch_size
  config.experiment_name = "ek100_cast"
  return config
