"""TSD-fad on Kinetics-400: a ViT-S video student distilled in two stages, 8x224x224.

Stage 1 (100 epochs): a per-frame ResNet-101 teacher, fine-tuned on the 400
classes, teaches with `alpha*CE + (1-alpha)*KL + beta*MSE(aligner(tokens),
layer4)`; the student's first 8 layers use MHCA. Stage 2 (300 epochs): a
transformer teacher (by default a TimeSformer-B run of
`configs/k400_timesformer.py`) teaches with `alpha*CE + (1-alpha)*KL`.

Data: DMVR-format TFRecords (`--config.dataset.data_dir=<dir>`), ImageNet
normalisation (what the torchvision teacher expects). Required on the command line:
  --config.distill.stage1.checkpoint_path=<resnet101.pth or .npz, torchvision keys>
  --config.distill.stage2.workdir=<the teacher's training run>
"""

from vivit_knn.config import attention_config, base_config
from vivit_knn.models.resnet import stage_channels
from vivit_knn.presets import set_dataset

K400_TRAIN_SIZE = 234_584  # the videos still online; adjust to your copy
TEACHER_DEPTH = 101


def get_config():
  """ViT-S student, TSD-fad: 100 + 300 epochs, AdamW."""
  config = base_config()
  config.train.global_batch_size = 128
  set_dataset(config, "tfrecord", augment=False)
  config.experiment_name = "k400_tsd_fad"
  config.dataset.num_classes = 400
  config.dataset.num_train = K400_TRAIN_SIZE
  config.dataset.frame_stride = 8
  config.dataset.normalization = "imagenet"

  m = config.model  # ViT-S/16x2: 12 layers, 6 heads, width 384
  m.name = "student"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 384, 6, 1536, 12
  m.patch_size = (16, 16, 2)
  m.attention = attention_config("dense")
  m.classifier = "token"
  m.stochastic_depth = 0.1
  m.kernel_init_method = "central_frame_initializer"
  m.student.mhca_layers = 8
  m.student.aligner_features = stage_channels(TEACHER_DEPTH)[-1]

  config.optimizer.name = "adamw"
  config.optimizer.base_learning_rate = 5e-4
  config.optimizer.weight_decay = 0.05
  config.optimizer.grad_clip_norm = 1.0
  config.train.num_train_steps = 0
  config.train.num_epochs = 400.0
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.eval.global_batch_size = 64

  # Optional: start the student from an image ViT-S/16 (e.g. an ImageNet-21k `.npz`):
  # --config.init_from.checkpoint_path=<file>; MHCA, branches and aligner start fresh.
  config.init_from.checkpoint_format = "vit_npz"

  d = config.distill
  d.method = "fad"
  d.alpha, d.beta, d.tau = 0.5, 1.0, 1.0
  d.stage1_epochs = 100.0
  d.stage1.depth = TEACHER_DEPTH
  d.stage1.checkpoint_format = "torchvision"
  d.stage2.config_file = "configs/k400_timesformer.py"
  return config
