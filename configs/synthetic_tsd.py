"""Two-stage distillation on the synthetic motion task: a tiny student, no downloads.

Stage 2's teacher is a Dk-ViViT trained with `configs/synthetic_dk.py`; train
it first (python -m vivit_knn.main --config=configs/synthetic_dk.py
--workdir=runs/synthetic_dk), or point `--config.distill.stage2.workdir`
elsewhere. Stage 1's per-frame ResNet-18 is randomly initialised
(`checkpoint_format='none'`): no CNN can read this task from single frames
anyway, so stage 1 here only exercises the fad/fpld machinery. The student
has both an aligner and branch heads, so `--config.distill.method=fpld`
switches variants without other changes.
"""

from vivit_knn.config import attention_config, base_config
from vivit_knn.models.resnet import stage_channels

TEACHER_DEPTH = 18


def get_config():
  """Tiny MHCA student (4 layers, width 64) at 8x32x32; 100 stage-1 + 500 stage-2 steps."""
  config = base_config()
  config.experiment_name = "synthetic_tsd"
  config.dataset.num_frames = 8
  config.dataset.image_size = 32
  config.dataset.num_train = 2048
  config.dataset.num_eval = 512

  m = config.model
  m.name = "student"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 64, 4, 128, 4
  m.patch_size = (8, 8, 2)
  m.attention = attention_config("dense")
  m.classifier = "token"
  m.student.mhca_layers = 2
  m.student.branch_heads = 4
  m.student.aligner_features = stage_channels(TEACHER_DEPTH)[-1]

  config.optimizer.name = "adamw"
  config.optimizer.base_learning_rate = 1e-3
  config.optimizer.warmup_steps = 50
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 1.0

  config.train.global_batch_size = 32
  config.train.num_train_steps = 600
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 200
  config.eval.global_batch_size = 64

  d = config.distill
  d.method = "fad"
  d.alpha, d.beta, d.tau, d.eta = 0.5, 1.0, 4.0, 1.1
  d.stage1_steps = 100
  d.stage1.depth = TEACHER_DEPTH
  d.stage1.checkpoint_format = "none"
  d.stage2.config_file = "configs/synthetic_dk.py"
  d.stage2.workdir = "runs/synthetic_dk"
  return config
