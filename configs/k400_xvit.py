"""X-ViT-B/16 on Kinetics-400, 8x224x224: the paper's setting (div=8 for Kinetics).

Data: DMVR-format TFRecords (`--config.dataset.data_dir=<dir>`). Weights:
ImageNet-21k ViT-B/16 (`--config.init_from.checkpoint_path=<file>`). Optimiser
as the authors' Kinetics recipe: SGD momentum 0.9, lr 0.03, cosine with 5 warmup
epochs, 30 epochs, weight decay 1e-5, mixup 0.4, label smoothing (its 0.5 dropout before
the classifier has no separate key here: `model.dropout_rate` would apply
everywhere). For SSv2 use `--config.model.xvit_div=4`.
"""

from vivit_knn.config import attention_config, base_config
from vivit_knn.presets import set_dataset

K400_TRAIN_SIZE = 234_584  # the paper's videos still online; adjust to your copy


def get_config():
  """X-ViT-B/16 with space-time mixing (div 8) and a one-block temporal-attention head."""
  config = base_config()
  m = config.model
  m.name = "xvit"
  m.attention_type = "space_time_mixing"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 768, 12, 3072, 12
  m.patch_size = (16, 16, 1)
  m.xvit_div = 8
  m.num_summary_tokens = 0
  m.head_layers = 1
  m.attention = attention_config("dense")
  m.temporal_attention = attention_config("dense")
  m.classifier = "token"
  m.dropout_rate = 0.0

  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.base_learning_rate = 0.03
  config.optimizer.weight_decay = 1e-5
  config.optimizer.grad_clip_norm = 1.0
  config.loss.label_smoothing = 0.1
  config.loss.mixup_alpha = 0.4
  config.train.global_batch_size = 64
  config.train.num_train_steps = 0
  config.train.num_epochs = 30.0
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.eval.global_batch_size = 64

  set_dataset(config, "tfrecord", augment=False)
  config.dataset.num_classes = 400
  config.dataset.num_train = K400_TRAIN_SIZE
  config.dataset.frame_stride = 16
  config.optimizer.warmup_epochs = 5.0
  config.experiment_name = "k400_xvit"
  config.init_from.checkpoint_format = "timm"
  config.init_from.required = True  # an ImageNet ViT-B/16; see the module doc
  return config
