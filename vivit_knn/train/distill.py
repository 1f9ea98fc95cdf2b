"""Two-stage distillation (TSD-fad / TSD-fpld) as a loss plug-in of the one trainer.

Phase 'stage1' (the first `distill.stage1_steps`, or `stage1_epochs`) runs a frozen per-frame
ResNet teacher and minimises `alpha*CE + (1-alpha)*KL(teacher||student) + beta*aux`, aux the MSE
between the student's aligned patch tokens and the teacher's layer4 maps ('fad') or the mean
OFA loss of the student's branch heads ('fpld'). Phase 'stage2' runs a frozen video transformer
restored from another run's checkpoint and minimises `alpha*CE + (1-alpha)*KL`. Teachers run in
inference mode without gradient; the phase is a function of the step, so a resume picks the
right teacher.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import traverse_util

from vivit_knn import config as config_lib
from vivit_knn.data.registry import build_dataset
from vivit_knn.models import resnet
from vivit_knn.models.registry import build_model
from vivit_knn.train import losses, sharding
from vivit_knn.train.objectives import Objective, Terms
from vivit_knn.train.run_info import read_run_info, restore_params
from vivit_knn.weights.torchvision_resnet import load_torchvision_resnet
from vivit_knn.weights.tree import check_shapes

STAGE1, STAGE2 = "stage1", "stage2"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a config file (relative paths: the working directory, then the repo)."""
  candidates = [path] if os.path.isabs(path) else [path, os.path.join(_REPO_ROOT, path)]
  found = next((p for p in candidates if os.path.isfile(p)), None)
  if found is None:
    raise FileNotFoundError(f"distill.stage2.config_file={path} not found")
  spec = importlib.util.spec_from_file_location("teacher_config", found)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def teacher_sources(config: ml_collections.ConfigDict) -> List[Tuple[str, str, str]]:
  """`(field, path, format)` of the teachers `config.distill` names: stage 1's file, stage 2's run."""
  ds, out = config.distill, []
  if ds.method and (ds.stage1_steps > 0 or ds.stage1_epochs > 0) and (
      ds.stage1.checkpoint_format != "none"):
    out.append(("distill.stage1.checkpoint_path", ds.stage1.checkpoint_path,
                ds.stage1.checkpoint_format))
  if ds.method and ds.stage2.workdir:
    out.append(("distill.stage2.workdir", ds.stage2.workdir, "run"))
  return out


def tubelet_average(frame_maps: jax.Array, num_tubelets: int) -> jax.Array:
  """Averages per-frame maps `[B, T, h, w, C]` over each tubelet's frames -> `[B, t, h, w, C]`."""
  b, t = frame_maps.shape[:2]
  if t % num_tubelets:
    raise ValueError(f"{t} frames do not split into {num_tubelets} tubelets")
  return jnp.mean(frame_maps.reshape((b, num_tubelets, t // num_tubelets) + frame_maps.shape[2:]),
                  axis=2)


class DistillObjective(Objective):
  """TSD loss: phases 'stage1' (CNN teacher + fad/fpld) and 'stage2' (transformer teacher)."""

  def __init__(self, config: ml_collections.ConfigDict,
               num_train_examples: Optional[int] = None):
    self.config = config
    self.cfg = config.distill
    self._num_train_examples = num_train_examples
    self._teachers: Dict[str, Any] = {}

  def stage1_steps(self) -> int:
    """Length of stage 1 in steps: `stage1_steps`, else `stage1_epochs` of the train split."""
    if self.cfg.stage1_steps > 0:
      return int(self.cfg.stage1_steps)
    if self.cfg.stage1_epochs <= 0:
      return 0
    if self._num_train_examples is None:
      self._num_train_examples = build_dataset(self.config.dataset).info.num_train_examples
    return max(1, math.ceil(self.cfg.stage1_epochs * self._num_train_examples
                            / self.config.train.global_batch_size))

  def phase(self, step: int) -> str:
    """'stage1' before `stage1_steps()`, then 'stage2'."""
    return STAGE1 if step < self.stage1_steps() else STAGE2

  def init_frozen(self, exp, phase: str) -> Any:
    """Loads (or, for `checkpoint_format='none'`, initialises) the phase's teacher, replicated."""
    teacher = self._stage1_teacher if phase == STAGE1 else self._stage2_teacher
    model, variables = teacher(exp)
    self._teachers[phase] = model
    return jax.device_put(variables, sharding.replicated(exp.mesh))

  def _stage1_teacher(self, exp) -> Tuple[resnet.ResNet, Any]:
    s1 = self.cfg.stage1
    model = resnet.ResNet(num_classes=exp.num_classes, depth=s1.depth)
    frame = jnp.zeros((1,) + tuple(exp.dataset.info.input_shape)[1:], jnp.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), frame, train=False))
    if s1.checkpoint_format == "none":
      logging.warning("distill.stage1.checkpoint_format='none': the stage-1 teacher is a random "
                      "ResNet-%d (smoke tests only)", s1.depth)
      return model, jax.jit(lambda: model.init(jax.random.key(self.config.seed), frame,
                                               train=False))()
    if not os.path.isfile(s1.checkpoint_path):
      raise FileNotFoundError(f"distill.stage1.checkpoint_path={s1.checkpoint_path} "
                              "does not exist")
    variables, depth = load_torchvision_resnet(s1.checkpoint_path)
    if depth != s1.depth:
      raise ValueError(f"distill.stage1.depth={s1.depth} but {s1.checkpoint_path} holds a "
                       f"ResNet-{depth}")
    check_shapes(f"distill.stage1.checkpoint_path: the ResNet in {s1.checkpoint_path}",
                 *(traverse_util.flatten_dict(dict(t), sep="/") for t in (variables, abstract)))
    logging.info("Stage-1 teacher: ResNet-%d from %s", depth, s1.checkpoint_path)
    return model, variables

  def _stage2_teacher(self, exp) -> Tuple[Any, Any]:
    s2 = self.cfg.stage2
    if not s2.config_file or not s2.workdir:
      raise ValueError("distill.stage2.config_file and distill.stage2.workdir are required "
                       "once training reaches stage 2")
    teacher_config = load_config_file(s2.config_file)
    info = read_run_info(s2.workdir)
    if len(info["class_names"]) != exp.num_classes:
      raise ValueError(f"distill.stage2.workdir={s2.workdir}: the teacher has "
                       f"{len(info['class_names'])} classes, the dataset {exp.num_classes}")
    config_lib.check_model(teacher_config.model, exp.dataset.info.input_shape,
                           field="distill.stage2 teacher model")
    model = build_model(teacher_config.model, exp.num_classes)
    params, step = restore_params(s2.workdir)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), exp.dummy_input(),
                                                 train=False)["params"])
    check_shapes(f"distill.stage2.workdir: the checkpoint in {s2.workdir}",
                 *(traverse_util.flatten_dict(dict(t), sep="/") for t in (params, abstract)))
    logging.info("Stage-2 teacher: %s from %s (step %d)", s2.config_file, s2.workdir, step)
    return model, {"params": params}

  def teacher_outputs(self, frozen: Any, phase: str,
                      inputs: jax.Array) -> Tuple[jax.Array, Optional[jax.Array]]:
    """`(teacher logits [B, C], per-frame layer4 maps [B, T, h, w, C'] or None)`, no gradient."""
    model = self._teachers[phase]
    if phase == STAGE1:
      logits, maps = resnet.frame_features(model, frozen, inputs)
      return jax.lax.stop_gradient(logits.astype(jnp.float32)), jax.lax.stop_gradient(maps)
    logits, _ = model.apply(frozen, inputs, train=False)
    return jax.lax.stop_gradient(logits.astype(jnp.float32)), None

  def __call__(self, frozen: Any, *, phase: str, inputs: jax.Array, targets: jax.Array,
               logits: jax.Array, intermediates: Dict[str, Any], step: jax.Array,
               rng: jax.Array) -> Tuple[jax.Array, Terms]:
    """`alpha*CE + (1-alpha)*KL (+ beta*fad|ofa in stage 1)`, with every term reported."""
    del step, rng
    cfg = self.cfg
    teacher_logits, teacher_maps = self.teacher_outputs(frozen, phase, inputs)
    ce = losses.softmax_cross_entropy(logits, targets)
    kd = losses.distillation_kl(logits, teacher_logits, cfg.tau)
    loss = cfg.alpha * ce + (1.0 - cfg.alpha) * kd
    terms = {"ce": ce, "kd": kd}
    if phase == STAGE1 and cfg.method == "fad":
      aligned = intermediates["aligned"]
      terms["fad"] = losses.feature_mse(aligned, tubelet_average(teacher_maps, aligned.shape[1]))
      loss = loss + cfg.beta * terms["fad"]
    elif phase == STAGE1:
      per_branch = [losses.ofa_loss(b, teacher_logits, targets, cfg.eta)
                    for b in intermediates["branch_logits"]]
      terms.update({f"ofa_{i}": v for i, v in enumerate(per_branch)})
      terms["ofa"] = sum(per_branch) / len(per_branch)
      loss = loss + cfg.beta * terms["ofa"]
    return loss, terms
