"""A seconds-long smoke run: tiny Dk-ViViT on a small synthetic set (used by the tests too)."""

from vivit_knn.config import attention_config, base_config


def get_config():
  """Dk-ViViT with one spatial and one temporal k-NN layer on 4x24x24 clips."""
  config = base_config()
  config.experiment_name = "synthetic_tiny"
  config.dataset.num_frames = 4
  config.dataset.image_size = 24
  config.dataset.num_train = 64
  config.dataset.num_eval = 32
  m = config.model
  m.model_type = "factorized_encoder"
  m.hidden_size, m.num_heads, m.mlp_dim = 16, 2, 32
  m.patch_size = (8, 8, 2)
  m.spatial_transformer.num_layers = 1
  m.temporal_transformer.num_layers = 1
  m.spatial_transformer.attention = attention_config("knn", 2 / 3)
  m.temporal_transformer.attention = attention_config("knn", 2 / 3)
  m.classifier = "token"
  config.optimizer.name = "sgd"
  config.optimizer.base_learning_rate = 0.05
  config.optimizer.warmup_steps = 2
  config.train.global_batch_size = 8
  config.train.num_train_steps = 8
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 4
  config.eval.global_batch_size = 8
  return config
