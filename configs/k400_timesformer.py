"""TimeSformer-B/16 (divided space-time) on Kinetics-400, 8x224x224: the paper's setting.

Data: DMVR-format TFRecords (`--config.dataset.data_dir=<dir>`), 8 frames every 32.
Weights: ImageNet-21k ViT-B/16 (`--config.init_from.checkpoint_path=<file>`, e.g.
a timm state dict or a `.npz`, with `--config.init_from.checkpoint_format`);
`temporal_attn`/`temporal_norm1` start as copies of the spatial ones.
The paper decays the learning rate 10x at epochs 11 and 14; the trainer's
schedule is warmup + cosine, used here with the paper's rate and length.
"""

from vivit_knn.config import attention_config, base_config
from vivit_knn.presets import set_dataset

K400_TRAIN_SIZE = 234_584  # the paper's videos still online; adjust to your copy


def get_config():
  """TimeSformer-B divided space-time, 8x224^2, SGD lr 0.005 for 15 epochs."""
  config = base_config()
  m = config.model
  m.name = "timesformer"
  m.attention_type = "divided_space_time"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 768, 12, 3072, 12
  m.patch_size = (16, 16, 1)
  m.attention = attention_config("dense")
  m.temporal_attention = attention_config("dense")
  m.classifier = "token"
  m.stochastic_depth = 0.1

  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.base_learning_rate = 0.005
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 1.0
  config.train.global_batch_size = 64
  config.train.num_train_steps = 0
  config.train.num_epochs = 15.0
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.eval.global_batch_size = 64

  set_dataset(config, "tfrecord", augment=False)
  config.dataset.num_classes = 400
  config.dataset.num_train = K400_TRAIN_SIZE
  config.dataset.frame_stride = 32
  config.optimizer.warmup_epochs = 0.0  # no warmup
  config.experiment_name = "k400_timesformer"
  config.init_from.checkpoint_format = "timm"
  config.init_from.required = True  # an ImageNet ViT-B/16; see the module doc
  return config
