"""Presets shared by the paper's UCF101/HMDB51 k-NN ViViT configs in `configs/`."""

from vivit_knn.config import attention_config, base_config

# Paper setting: k = 2n/3 of the keys in every k-NN attention.
KNN_FRACTION = 2 / 3


def vivit_b16x2(model_type: str, knn_spatial: bool, knn_temporal: bool):
  """ViViT-B/16x2 at 8x224x224 with k-NN attention where asked; SGD-momentum, cosine+warmup.

  For `spacetime` (model 1) `knn_spatial` sets the single encoder's attention.
  """
  config = base_config()
  m = config.model
  m.model_type = model_type
  m.hidden_size, m.num_heads, m.mlp_dim = 768, 12, 3072
  m.patch_size = (16, 16, 2)
  m.num_layers = 12
  m.spatial_transformer.num_layers = 8
  m.temporal_transformer.num_layers = 4
  kind = lambda on: attention_config("knn" if on else "dense", KNN_FRACTION)
  m.attention = kind(knn_spatial)
  m.spatial_transformer.attention = kind(knn_spatial)
  m.temporal_transformer.attention = kind(knn_temporal)
  m.classifier = "token"
  m.dropout_rate = 0.0
  m.stochastic_depth = 0.1
  m.kernel_init_method = "central_frame_initializer"

  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.base_learning_rate = 0.05
  config.optimizer.grad_clip_norm = 1.0
  config.loss.label_smoothing = 0.1
  config.loss.mixup_alpha = 0.3
  config.train.global_batch_size = 64
  config.train.num_train_steps = 0
  config.train.num_epochs = 30.0
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  # Videos per eval step; each brings num_test_clips x num_test_crops views into the batch.
  config.eval.global_batch_size = 8
  return config


def set_dataset(config, name: str, num_train: int):
  """Points `config.dataset` at a real dataset's defaults; warmup = 2.5 epochs."""
  from vivit_knn.data.registry import DATASET_DEFAULTS
  config.dataset = DATASET_DEFAULTS[name]()
  config.dataset.num_frames = 8
  config.dataset.image_size = 224
  steps_per_epoch = num_train // config.train.global_batch_size
  config.optimizer.warmup_steps = int(2.5 * steps_per_epoch)
  config.experiment_name = name
  return config
