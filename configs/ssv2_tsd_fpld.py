"""TSD-fpld on Something-Something v2: a ViT-S video student distilled in two stages.

Stage 1 (100 epochs): a per-frame ResNet-101 teacher, fine-tuned on the 174
classes, teaches with `alpha*CE + (1-alpha)*KL + beta*OFA`, the OFA loss
(eta = 1.1) applied to 4 branch heads at the ends of the student's quarters
(dropped for evaluation and export). Stage 2 (300 epochs): a transformer
teacher teaches with `alpha*CE + (1-alpha)*KL`; `distill.stage2.config_file`
must be the config that teacher run was trained with (its `model` block builds
the teacher; by default TimeSformer-B as in `configs/k400_timesformer.py`).

Data: DMVR-format TFRecords of SSv2 (`--config.dataset.data_dir=<dir>`), 8 frames
sampled one per segment of the whole video (`frame_sampling='segments'`: a random
frame of each of 8 equal segments in training, the segment middles at test time),
no horizontal flips (they swap left/right classes), ImageNet normalisation. Required
on the command line:
  --config.distill.stage1.checkpoint_path=<resnet101.pth or .npz, torchvision keys>
  --config.distill.stage2.workdir=<the teacher's training run>
"""

from vivit_knn.config import attention_config, base_config
from vivit_knn.presets import set_dataset

SSV2_TRAIN_SIZE = 168_913
TEACHER_DEPTH = 101


def get_config():
  """ViT-S student with 4 branch heads, TSD-fpld: 100 + 300 epochs, AdamW."""
  config = base_config()
  config.train.global_batch_size = 128
  set_dataset(config, "tfrecord", augment=False)
  config.experiment_name = "ssv2_tsd_fpld"
  config.dataset.num_classes = 174
  config.dataset.num_train = SSV2_TRAIN_SIZE
  config.dataset.frame_stride = 1
  config.dataset.frame_sampling = "segments"
  config.dataset.random_flip = False
  config.dataset.normalization = "imagenet"

  m = config.model  # ViT-S/16x2: 12 layers, 6 heads, width 384
  m.name = "student"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 384, 6, 1536, 12
  m.patch_size = (16, 16, 2)
  m.attention = attention_config("dense")
  m.classifier = "token"
  m.stochastic_depth = 0.1
  m.kernel_init_method = "central_frame_initializer"
  m.student.branch_heads = 4

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
  d.method = "fpld"
  d.alpha, d.beta, d.tau, d.eta = 0.5, 1.0, 1.0, 1.1
  d.stage1_epochs = 100.0
  d.stage1.depth = TEACHER_DEPTH
  d.stage1.checkpoint_format = "torchvision"
  d.stage2.config_file = "configs/k400_timesformer.py"
  return config
