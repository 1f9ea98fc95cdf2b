"""Recipes of the configs in `configs/`: synthetic runs, k-NN ViViT on UCF101/HMDB51, CAST."""

from vivit_knn.config import attention_config, base_config
from vivit_knn.data.registry import DATASET_DEFAULTS
from vivit_knn.models.cast import TRAINABLE_PATTERNS

# Paper setting: k = 2n/3 of the keys in every k-NN attention.
KNN_FRACTION = 2 / 3


def synthetic_run(name: str, *, image_size: int, learning_rate: float, num_train_steps: int,
                  checkpoint_every_steps: int, global_batch_size: int = 32,
                  eval_batch_size: int = 64, warmup_steps: int = 30):
  """A synthetic-task run (8 frames, 2048 / 512 clips, AdamW warmup-cosine); no model settings."""
  config = base_config()
  config.experiment_name = name
  config.dataset.update(num_frames=8, image_size=image_size, num_train=2048, num_eval=512)
  config.optimizer.update(name="adamw", base_learning_rate=learning_rate,
                          warmup_steps=warmup_steps, weight_decay=1e-4, grad_clip_norm=1.0)
  config.train.update(global_batch_size=global_batch_size, num_train_steps=num_train_steps,
                      log_every_steps=50, checkpoint_every_steps=checkpoint_every_steps)
  config.eval.global_batch_size = eval_batch_size
  return config


# The k-NN ViViT recipe's augmentation: colour jitter strength (x torchvision's 0.4/0.4/
# 0.4/0.1) and RandAugment with 2 ops at magnitude 9 (the usual RandAugment setting).
KNN_VIVIT_COLOR_JITTER = 0.8
KNN_VIVIT_RANDAUGMENT = (2, 9)
KNN_VIVIT_WARMUP_EPOCHS = 2.5


def vivit_b16x2(model_type: str, knn_spatial: bool, knn_temporal: bool):
  """ViViT-B/16x2 at 8x224x224 with k-NN attention where asked: the k-NN ViViT recipe.

  The recipe of every `configs/ucf101_*.py` and `configs/hmdb51_*.py`: initialised
  from a Kinetics-400 ViViT-B/16x2 scenic checkpoint of the same layout (required:
  pass `--config.init_from.checkpoint_path`, or `--config.init_from.required=False`).
  Layouts other than the factorised encoder have one encoder, whose attention
  `knn_spatial` sets.

  Deviations from the paper: 30 epochs at batch 64 and learning rate 0.05 (this
  project's schedule for UCF101/HMDB51); colour jitter 0.8 and RandAugment 2 ops
  at magnitude 9 (the usual strengths, not quoted from the paper); the 32-frame
  Kinetics checkpoint's temporal position embedding is interpolated to 4 tubelet
  steps; a ViViT-B FE checkpoint's spatial blocks 8-11 are skipped.
  """
  config = base_config()
  m = config.model
  m.update(model_type=model_type, hidden_size=768, num_heads=12, mlp_dim=3072,
           patch_size=(16, 16, 2))
  kind = lambda on: attention_config("knn" if on else "dense", KNN_FRACTION)
  # Only the keys the layout reads: setting the others is an error (they could not take effect).
  if model_type == "factorized_encoder":
    m.spatial_transformer.num_layers = 8
    m.temporal_transformer.num_layers = 4
    m.spatial_transformer.attention = kind(knn_spatial)
    m.temporal_transformer.attention = kind(knn_temporal)
  else:
    m.num_layers = 12
    m.attention = kind(knn_spatial)
  m.update(classifier="token", dropout_rate=0.0, stochastic_depth=0.1,
           kernel_init_method="central_frame_initializer")
  config.init_from.update(checkpoint_format="scenic", required=True)
  config.optimizer.update(name="sgd", momentum=0.9, base_learning_rate=0.05, grad_clip_norm=1.0,
                          warmup_steps=0, warmup_epochs=KNN_VIVIT_WARMUP_EPOCHS)
  config.loss.update(label_smoothing=0.1, mixup_alpha=0.3)
  config.train.update(global_batch_size=64, num_train_steps=0, num_epochs=30.0,
                      log_every_steps=100, checkpoint_every_steps=1000)
  # Videos per eval step; each brings num_test_clips x num_test_crops views into the batch.
  config.eval.global_batch_size = 8
  return config


def set_dataset(config, name: str, augment: bool = True):
  """Points `config.dataset` at a real dataset's defaults, 8x224x224; warmup 2.5 epochs.

  With `augment`, training clips get colour jitter and RandAugment (`KNN_VIVIT_*`).
  """
  config.dataset = DATASET_DEFAULTS[name]()
  config.dataset.update(num_frames=8, image_size=224)
  if augment:
    config.dataset.color_jitter = KNN_VIVIT_COLOR_JITTER
    config.dataset.randaugment_num_layers, config.dataset.randaugment_magnitude = (
        KNN_VIVIT_RANDAUGMENT)
  config.optimizer.update(warmup_steps=0, warmup_epochs=KNN_VIVIT_WARMUP_EPOCHS)
  config.experiment_name = name
  return config


def cast_b16(name: str, *, num_train: int, num_classes: int, epochs: int,
             stochastic_depth: float, frame_stride: int, num_test_clips: int,
             warmup_epochs: int = 5):
  """CAST-B/16 at 16x224x224 on DMVR TFRecords: the CAST paper's fine-tuning recipe.

  Frozen CLIP + VideoMAE ViT-B/16 experts (about 45M parameters train); B-CAST
  width 384, adapters 192. The experts are required
  (`init_from.spatial_expert.checkpoint_path`, `init_from.temporal_expert...`).
  The arguments are what differs between datasets.
  """
  config = base_config()
  m = config.model
  m.update(name="cast", hidden_size=768, num_heads=12, mlp_dim=3072, num_layers=12,
           patch_size=(16, 16, 2), stochastic_depth=stochastic_depth)
  m.attention.kind = "dense"
  m.cast.update(cross_dim=384, adapter_dim=192, mlp_adapter_scale=0.5)

  batch = 64  # the learning rates scale with it (x / 256)
  config.train.update(global_batch_size=batch, num_train_steps=0, num_epochs=float(epochs),
                      log_every_steps=100, checkpoint_every_steps=2000)
  config.eval.global_batch_size = 64
  config.optimizer.update(name="adamw", base_learning_rate=1e-3 * batch / 256,
                          end_learning_rate=1e-6 * batch / 256, weight_decay=0.05,
                          grad_clip_norm=0.0, trainable_patterns=TRAINABLE_PATTERNS,
                          layer_decay=0.75)
  config.loss.update(label_smoothing=0.1, mixup_alpha=0.8)

  set_dataset(config, "tfrecord", augment=False)
  config.dataset.update(num_classes=num_classes, num_train=num_train, num_frames=16,
                        frame_stride=frame_stride, image_size=224, normalization="imagenet",
                        num_test_clips=num_test_clips, num_test_crops=3)
  config.optimizer.update(warmup_steps=0, warmup_epochs=float(warmup_epochs))
  # The experts are the point of CAST: refuse random ones unless asked for.
  config.init_from.required = True
  config.experiment_name = name
  return config
