"""A student distilled from a trained synthetic teacher reaches it sooner than one without.

The teacher is a Dk-ViViT (`configs/synthetic_dk.py`) trained on clean labels.
Both students (`configs/synthetic_tsd.py`, 4 layers, width 64) then train on the
same clips with half of the labels replaced by random classes (fresh per draw):
on the clean task the tiny student learns as fast by itself as with a teacher,
so distillation only has something to add where the teacher knows more than the
labels. The distilled student uses the stage-2 objective
(`alpha*CE + (1-alpha)*KL`, no CNN stage: `stage1_steps=0`); the other has
`distill.method=''`, plain CE. Every `EVAL_EVERY` steps both are scored on the
512 held-out clips; the step count is the first evaluation within 5 points of
the teacher.
"""

import time

import jax
import numpy as np
import pytest

from tests.tiny import load_config
from vivit_knn.train import evaluation, sharding, steps, trainer
from vivit_knn.train.experiment import build_experiment

TEACHER_STEPS = 200
MAX_STEPS = 300
EVAL_EVERY = 10
LABEL_NOISE = 0.4


def _train_teacher(workdir):
  config = load_config("synthetic_dk")
  config.train.num_train_steps = TEACHER_STEPS
  config.optimizer.warmup_steps = 30
  config.train.checkpoint_every_steps = 10_000
  return trainer.train(config, workdir)["eval"]["top1"]


def _noisy(batches, num_classes):
  """Replaces each label by a uniform random class with probability LABEL_NOISE."""
  for i, batch in enumerate(batches):
    rng = np.random.default_rng(i)
    labels = batch["label"]
    flip = rng.random(labels.shape) < LABEL_NOISE
    random = rng.integers(0, num_classes, labels.shape)
    yield dict(batch, label=np.where(flip, random, labels).astype(labels.dtype))


def _steps_to_target(teacher_workdir, distill, target):
  """First evaluated step whose held-out top-1 is >= target (None within MAX_STEPS)."""
  config = load_config("synthetic_tsd")
  config.train.num_train_steps = MAX_STEPS
  config.optimizer.warmup_steps = 20
  config.distill.stage1_steps = 0
  config.distill.stage2.workdir = teacher_workdir
  if not distill:
    config.distill.method = ""
  exp = build_experiment(config)
  state = exp.init_state(jax.random.key(config.seed))
  phase = exp.objective.phase(0)
  frozen = exp.objective.init_frozen(exp, phase)
  train_step = steps.make_train_step(exp, frozen, phase)
  eval_step = steps.make_eval_step(exp)
  rng = jax.random.key(1)
  batches = _noisy(exp.dataset.train_batches(config.train.global_batch_size, seed=config.seed),
                   exp.num_classes)
  curve = []
  for step in range(1, MAX_STEPS + 1):
    state, _ = train_step(state, sharding.shard_batch(next(batches), exp.mesh), rng, frozen)
    if step % EVAL_EVERY == 0:
      curve.append((step, evaluation.run_eval(exp, state.params, eval_step)["top1"]))
      if curve[-1][1] >= target:
        return step, curve
  return None, curve


@pytest.mark.slow
def test_distilled_student_reaches_the_teacher_in_fewer_steps(tmp_path):
  start = time.time()
  teacher_top1 = _train_teacher(str(tmp_path / "teacher"))
  target = teacher_top1 - 0.05
  t_teacher = time.time()
  distilled, d_curve = _steps_to_target(str(tmp_path / "teacher"), True, target)
  t_distilled = time.time()
  plain, p_curve = _steps_to_target(str(tmp_path / "teacher"), False, target)
  fmt = lambda curve: " ".join(f"{s}:{a:.2f}" for s, a in curve)
  print(f"\nteacher top-1 {teacher_top1:.3f} after {TEACHER_STEPS} steps; target {target:.3f}\n"
        f"distilled student: {distilled} steps  {fmt(d_curve)}\n"
        f"plain student:     {plain} steps  {fmt(p_curve)}\n"
        f"time: teacher {t_teacher - start:.0f}s, distilled {t_distilled - t_teacher:.0f}s, "
        f"plain {time.time() - t_distilled:.0f}s")
  assert teacher_top1 >= 0.9
  assert distilled is not None
  assert plain is None or distilled < plain
