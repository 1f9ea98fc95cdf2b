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

from vivit_knn.config import attention_config
from vivit_knn.presets import synthetic_run
from vivit_knn.models.resnet import stage_channels

TEACHER_DEPTH = 18


def get_config():
  """Tiny MHCA student (4 layers, width 64) at 8x32x32; 100 stage-1 + 500 stage-2 steps."""
  config = synthetic_run("synthetic_tsd", image_size=32, learning_rate=1e-3,
                         num_train_steps=600, checkpoint_every_steps=200, warmup_steps=50)

  m = config.model
  m.name = "student"
  m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 64, 4, 128, 4
  m.patch_size = (8, 8, 2)
  m.attention = attention_config("dense")
  m.classifier = "token"
  m.student.mhca_layers = 2
  m.student.branch_heads = 4
  m.student.aligner_features = stage_channels(TEACHER_DEPTH)[-1]


  d = config.distill
  d.method = "fad"
  d.alpha, d.beta, d.tau, d.eta = 0.5, 1.0, 4.0, 1.1
  d.stage1_steps = 100
  d.stage1.depth = TEACHER_DEPTH
  d.stage1.checkpoint_format = "none"
  d.stage2.config_file = "configs/synthetic_dk.py"
  d.stage2.workdir = "runs/synthetic_dk"
  return config
