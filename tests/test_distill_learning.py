"""A student distilled from a trained synthetic teacher beats one without, on every seed.

The teacher is a Dk-ViViT (`configs/synthetic_dk.py`) trained on clean labels.
Both students (`configs/synthetic_tsd.py`, 4 layers, width 64) then train on the
same clips with each label replaced, with probability 0.4, by a uniform random
class (fresh per draw): on the clean task the tiny student learns as fast by
itself as with a teacher, so distillation only has something to add where the
teacher knows more than the labels. The distilled student uses the stage-2 objective
(`alpha*CE + (1-alpha)*KL`, no CNN stage: `stage1_steps=0`); the other has
`distill.method=''`, plain CE. Each seed fixes the student's initialisation,
the batch order and the label noise, shared by the two students; both train
for the same `STUDENT_STEPS` (one full cosine schedule) and are scored once on
the 512 held-out clips.

Measured (held-out top-1 distilled / plain; cross-entropy distilled / plain):

  cores   seed 0                    seed 1                    seed 2
  2       0.79 / 0.63; 0.80 / 1.10  0.59 / 0.57; 0.80 / 1.13  0.99 / 0.84; 0.43 / 0.84
  1       0.81 / 0.63; 0.80 / 1.10  0.71 / 0.57; 0.81 / 1.13  0.99 / 0.84; 0.43 / 0.84

An earlier record, made on another machine, read 0.83, 0.66 and 0.99 distilled,
the same plain figures, and top-1 margins 0.08, 0.24 and 0.16 on seeds 3-5. A
run is bitwise reproducible on a given number of cores, under any load
(`tests/test_same_result.py`), but not across core counts: XLA's CPU backend
splits long reductions (bias and weight gradients summed over the batch) by the
size of its thread pool, which is the number of usable cores. The plain students
barely feel it (their losses move in the sixth digit); the teacher's k-NN masks
turn the last-bit differences into a different teacher, and that moves the
distilled students' top-1 by up to 0.12 (seed 1). Hence the margins: on every
seed the distilled student must win on top-1 and clearly on cross-entropy; the
top-1 gain must be large on average.
"""

import time

import jax
import numpy as np
import pytest

from tests.tiny import load_config
from vivit_knn.train import evaluation, sharding, steps, trainer
from vivit_knn.train.experiment import build_experiment

TEACHER_STEPS = 150
STUDENT_STEPS = 80
SEEDS = (0, 1, 2)
LABEL_NOISE = 0.4
MARGIN_EVERY_SEED = 0.0  # distilled top-1 minus plain top-1, on each seed (measured >= 0.016)
MARGIN_MEAN = 0.08  # ... and averaged over the seeds (measured >= 0.11)
LOSS_MARGIN = 0.1  # held-out cross-entropy: plain minus distilled, on each seed (>= 0.29)


def _train_teacher(workdir):
  config = load_config("synthetic_dk")
  config.train.num_train_steps = TEACHER_STEPS
  config.optimizer.warmup_steps = 30
  config.train.checkpoint_every_steps = 10_000
  return trainer.train(config, workdir)["eval"]["top1"]


def _noisy(batches, num_classes, seed):
  """Replaces each label by a uniform random class with probability LABEL_NOISE."""
  for i, batch in enumerate(batches):
    rng = np.random.default_rng([seed, i])
    labels = batch["label"]
    flip = rng.random(labels.shape) < LABEL_NOISE
    random = rng.integers(0, num_classes, labels.shape)
    yield dict(batch, label=np.where(flip, random, labels).astype(labels.dtype))


def _held_out_after_training(teacher_workdir, distill, seeds):
  """`{seed: eval result}` after STUDENT_STEPS steps; one compilation serves every seed."""
  config = load_config("synthetic_tsd")
  config.train.num_train_steps = STUDENT_STEPS
  config.optimizer.warmup_steps = 20
  config.distill.stage1_steps = 0
  config.distill.stage2.workdir = teacher_workdir
  if not distill:
    config.distill.method = ""
  exp = build_experiment(config)
  phase = exp.objective.phase(0)
  frozen = exp.objective.init_frozen(exp, phase)
  train_step = steps.make_train_step(exp, frozen, phase)
  eval_step = steps.make_eval_step(exp)
  results = {}
  for seed in seeds:
    state = exp.init_state(jax.random.key(seed))
    batches = _noisy(exp.dataset.train_batches(config.train.global_batch_size, seed=seed),
                     exp.num_classes, seed)
    rng = jax.random.key(seed)
    for _ in range(STUDENT_STEPS):
      state, _ = train_step(state, sharding.shard_batch(next(batches), exp.mesh), rng, frozen)
    results[seed] = evaluation.run_eval(exp, state.params, eval_step)
  return results


@pytest.mark.slow
def test_distilled_student_beats_the_plain_one_on_every_seed(tmp_path):
  start = time.time()
  teacher_top1 = _train_teacher(str(tmp_path / "teacher"))
  t_teacher = time.time()
  distilled = _held_out_after_training(str(tmp_path / "teacher"), True, SEEDS)
  t_distilled = time.time()
  plain = _held_out_after_training(str(tmp_path / "teacher"), False, SEEDS)
  gains = np.array([distilled[s]["top1"] - plain[s]["top1"] for s in SEEDS])
  rows = "\n".join(
      f"seed {s}: distilled top-1 {distilled[s]['top1']:.3f} loss {distilled[s]['loss']:.3f}"
      f" | plain top-1 {plain[s]['top1']:.3f} loss {plain[s]['loss']:.3f}" for s in SEEDS)
  print(f"\nteacher top-1 {teacher_top1:.3f} after {TEACHER_STEPS} steps\n{rows}\n"
        f"gain per seed {np.round(gains, 3).tolist()}, mean {gains.mean():.3f}\n"
        f"time: teacher {t_teacher - start:.0f}s, distilled {t_distilled - t_teacher:.0f}s, "
        f"plain {time.time() - t_distilled:.0f}s")
  assert teacher_top1 >= 0.9
  assert np.all(gains > MARGIN_EVERY_SEED), gains
  assert gains.mean() >= MARGIN_MEAN, gains
  loss_gaps = np.array([plain[s]["loss"] - distilled[s]["loss"] for s in SEEDS])
  assert np.all(loss_gaps > LOSS_MARGIN), loss_gaps
