"""Optimisers and the warmup-cosine learning-rate schedule from `config.optimizer`.

Weight decay applies to parameters with `ndim > 1` only (kernels, embedding tables, `[1, N, D]`
position embeddings), never to biases or norm scales. `sgd`: `clip -> add_decayed_weights ->
sgd(momentum)` (decay added to the gradient, i.e. L2). `adamw`: `clip -> adamw`, decoupled decay
scaled by the learning rate.

`trainable_patterns` (regexes searched in '/'-joined parameter paths; empty: all) restricts that
chain, its clipping norm and state included, to the matching parameters; every other one gets an
exact zero update and no decay. `layer_decay` < 1 scales the update of layer `l` by
`layer_decay ** (L + 1 - l)`: `l = i + 1` under a `*block_<i>` module (parallel stacks of CAST
share a layer), 0 for the stem (each family's `stem_names`), `L + 1` for the rest (heads, norms).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vivit_knn.models import registry as model_registry
from vivit_knn.weights.tree import key_name

Schedule = Callable[[Any], jax.Array]

_KNOWN_OPTIMIZERS = ("sgd", "adamw")


def _check_number(cfg: Mapping[str, Any], field: str, *, minimum: float | None = None,
                  below: float | None = None) -> float:
  value = cfg[field]
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise ValueError(f"optimizer.{field} must be a finite number, got {value!r}")
  if minimum is not None and value < minimum:
    raise ValueError(f"optimizer.{field} must be >= {minimum}, got {value!r}")
  if below is not None and value >= below:
    raise ValueError(f"optimizer.{field} must be < {below:g}, got {float(value)}")
  return float(value)


def _as_int(value: Any) -> int | None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    return None
  return int(value)


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """A run's length and warmup in steps, and the settings they came from (e.g. '2.5 epochs').

  `steps_per_epoch` is train examples / global batch, fractional: epochs count examples seen.
  """

  total_steps: int
  warmup_steps: int
  steps_per_epoch: float
  total_source: str
  warmup_source: str


def _epochs_to_steps(epochs: float, steps_per_epoch: float) -> int:
  # Round up, as the run length does; the small slack keeps exact products exact.
  return int(math.ceil(epochs * steps_per_epoch - 1e-9))


def plan_steps(config: ml_collections.ConfigDict, num_train_examples: int,
               training: bool = True) -> StepPlan:
  """Turns `train.num_train_steps|num_epochs` and `optimizer.warmup_steps|warmup_epochs` into steps.

  An epoch is `num_train_examples / train.global_batch_size` steps, rounded up; warmup_epochs
  < 0 gives the warmup in steps. When `training`, both warmup settings, or a warmup not
  shorter than the run, raise a ValueError showing the effective numbers; evaluation and
  inference never fail on the schedule (the warmup becomes 0 steps).
  """
  tr, opt = config.train, config.optimizer
  batch = int(tr.global_batch_size)
  per_epoch = num_train_examples / batch
  if tr.num_train_steps > 0:
    total, total_source = int(tr.num_train_steps), "train.num_train_steps"
  else:
    total = max(1, _epochs_to_steps(tr.num_epochs, per_epoch))
    total_source = f"{tr.num_epochs:g} epochs"
  warmup_epochs = float(opt.get("warmup_epochs", -1.0))
  steps = _as_int(opt.warmup_steps)
  size = f"train split of {num_train_examples} examples at global batch {batch}"
  if warmup_epochs >= 0:
    if steps and training:
      raise ValueError(
          f"optimizer.warmup_steps={opt.warmup_steps} and optimizer.warmup_epochs="
          f"{warmup_epochs:g} are both set: give one (optimizer.warmup_steps=0, or "
          "optimizer.warmup_epochs=-1 to count warmup in steps)")
    warmup, warmup_source = _epochs_to_steps(warmup_epochs, per_epoch), f"{warmup_epochs:g} epochs"
    field = "optimizer.warmup_epochs"
  else:
    if (steps is None or steps < 0) and training:
      raise ValueError(f"optimizer.warmup_steps must be a non-negative integer, got "
                       f"{opt.warmup_steps!r}")
    warmup, warmup_source = max(0, steps or 0), "optimizer.warmup_steps"
    field = "optimizer.warmup_steps"
  if warmup >= total:
    if training:
      warm = (f"{warmup_source} = {warmup} steps" if warmup_epochs >= 0 else f"{warmup} steps")
      tot = (f"{total_source} = {total} steps" if tr.num_train_steps <= 0
             else f"{total}, train.num_train_steps")
      raise ValueError(f"{field}: warmup ({warm}) must be smaller than the total steps ({tot}); "
                       f"{size}")
    warmup = 0
  return StepPlan(total_steps=total, warmup_steps=warmup, steps_per_epoch=per_epoch,
                  total_source=total_source, warmup_source=warmup_source)


def _make_schedule(cfg: Mapping[str, Any], total_steps: int) -> Schedule:
  """``base * step / warmup`` up to ``warmup_steps``, then a half cosine to ``end`` at ``total``."""
  if _as_int(total_steps) is None or total_steps <= 0:
    raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
  total_steps = int(total_steps)
  base = _check_number(cfg, "base_learning_rate", minimum=0.0)
  end = _check_number(cfg, "end_learning_rate", minimum=0.0)
  warmup = _as_int(cfg["warmup_steps"])
  if warmup is None or warmup < 0:
    raise ValueError(f"optimizer.warmup_steps must be a non-negative integer, got "
                     f"{cfg['warmup_steps']!r}")
  if warmup >= total_steps:
    raise ValueError(f"optimizer.warmup_steps ({warmup}) must be smaller than total_steps "
                     f"({total_steps})")
  decay_steps = float(total_steps - warmup)

  def schedule(step: Any) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    warm_lr = base * step / max(warmup, 1)
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    cosine_lr = end + (base - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup, warm_lr, cosine_lr).astype(jnp.float32)

  return schedule


def weight_decay_mask(params: Any) -> Any:
  """Pytree of booleans: ``True`` for parameters that receive weight decay (``ndim > 1``)."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def trainable_mask(params: Any, patterns: Sequence[str]) -> Any:
  """Pytree of booleans: ``True`` where a pattern matches the parameter's path (all if none)."""
  if not patterns:
    return jax.tree.map(lambda _: True, params)
  try:
    compiled = [re.compile(p) for p in patterns]
  except re.error as err:
    raise ValueError(f"optimizer.trainable_patterns: invalid regex: {err}") from None
  mask = jax.tree_util.tree_map_with_path(
      lambda kp, _: any(c.search(key_name(kp)) for c in compiled), params)
  if not any(jax.tree.leaves(mask)):
    raise ValueError(f"optimizer.trainable_patterns={tuple(patterns)} match no parameter")
  return mask


def zero_frozen(grads: Any, patterns: Sequence[str]) -> Any:
  """``grads`` with every leaf outside ``patterns`` replaced by constant zeros.

  XLA then drops the frozen weights' gradient work; they stay out of the logged gradient norm.
  """
  if not patterns:
    return grads
  return jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads,
                      trainable_mask(grads, patterns))


_BLOCK_NAME = re.compile(r"block_(\d+)$")
# Every model family's stem parameter names (its `ModelFamily.stem_names`).
_STEM_NAMES = model_registry.stem_names()


def _layer_of(path: str) -> int | None:
  """Block index + 1, 0 for the stem, None for the rest (see the module doc)."""
  names = path.split("/")
  blocks = [m for m in map(_BLOCK_NAME.search, names) if m]
  if blocks:
    return int(blocks[0].group(1)) + 1
  return 0 if _STEM_NAMES.intersection(names) else None


def _layers(tree: Any) -> tuple[Any, int]:
  """(pytree of layer ids, L + 1) for the parameter paths of ``tree``."""
  is_leaf = lambda x: x is None
  layers = jax.tree_util.tree_map_with_path(lambda kp, _: _layer_of(key_name(kp)), tree)
  top = max((l for l in jax.tree.leaves(layers, is_leaf=is_leaf) if l is not None),
            default=0) + 1
  return jax.tree.map(lambda l: top if l is None else l, layers, is_leaf=is_leaf), top


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Scales each update by ``decay ** (L + 1 - layer)`` (layers from the update tree's paths)."""

  def scale(updates, params):
    del params
    ids, top = _layers(updates)
    return jax.tree.map(lambda u, l: u * jnp.asarray(decay ** (top - l), u.dtype), updates, ids)

  return optax.stateless(scale)


def build_optimizer(config: Any, total_steps: int, warmup_steps: int | None = None
                    ) -> tuple[optax.GradientTransformation, Schedule]:
  """``(tx, schedule)`` of ``config.optimizer`` (see the module doc) for ``total_steps``.

  ``warmup_steps``: the run's warmup (:func:`plan_steps`), replacing the config's
  ``warmup_steps`` and ``warmup_epochs`` (None: ``warmup_steps``, with ``warmup_epochs``
  unset). ``grad_clip_norm`` None or <= 0 disables clipping. ``schedule(step)`` is the learning
  rate of the update at optimiser step ``step`` (0-based).
  """
  cfg = dict(config.items())
  if warmup_steps is not None:
    cfg["warmup_steps"], cfg["warmup_epochs"] = warmup_steps, -1.0
  if _check_number(cfg, "warmup_epochs") >= 0:  # epochs need the train split's size
    raise ValueError(f"optimizer.warmup_epochs={cfg['warmup_epochs']} needs the train split's "
                     "size: build the run with vivit_knn.train.experiment.build_experiment "
                     "(or give optimizer.warmup_steps)")
  name = cfg["name"]
  if not isinstance(name, str) or name.lower() not in _KNOWN_OPTIMIZERS:
    raise ValueError(f"optimizer.name must be one of {_KNOWN_OPTIMIZERS}, got {name!r}")
  name = name.lower()
  schedule = _make_schedule(cfg, total_steps)
  weight_decay = _check_number(cfg, "weight_decay", minimum=0.0)

  clip = 0.0 if cfg["grad_clip_norm"] is None else _check_number(cfg, "grad_clip_norm")
  # Off is an identity step rather than no step: both keep an empty state, so the
  # optimizer state has one layout and a resume may turn clipping on or off.
  parts: list[optax.GradientTransformation] = [
      optax.clip_by_global_norm(clip) if clip > 0 else optax.identity()]

  if name == "sgd":
    momentum = _check_number(cfg, "momentum", minimum=0.0, below=1.0)
    if weight_decay > 0:
      parts.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
    parts.append(optax.sgd(schedule, momentum=momentum if momentum > 0 else None,
                           nesterov=bool(cfg["nesterov"])))
  else:
    b1, b2 = (_check_number(cfg, field, minimum=0.0, below=1.0) for field in ("beta1", "beta2"))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                             mask=weight_decay_mask))
  tx = optax.chain(*parts)
  patterns = tuple(cfg["trainable_patterns"] or ())
  if not all(isinstance(p, str) for p in patterns):
    raise ValueError(f"optimizer.trainable_patterns must be regex strings, got {patterns!r}")
  if patterns:
    tx = optax.multi_transform(
        {"trainable": tx, "frozen": optax.set_to_zero()},
        lambda params: jax.tree.map(lambda t: "trainable" if t else "frozen",
                                    trainable_mask(params, patterns)))
  layer_decay = _check_number(cfg, "layer_decay")
  if not 0.0 < layer_decay <= 1.0:
    raise ValueError(f"optimizer.layer_decay must be in (0, 1], got {layer_decay}")
  if layer_decay < 1.0:
    tx = optax.chain(tx, scale_by_layer_decay(layer_decay))
  return tx, schedule
