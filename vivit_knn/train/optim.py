"""Optimisers and learning-rate schedules built from an ``ml_collections`` config.

Weight decay policy: decay is applied only to parameters with ``ndim > 1``
(dense/conv kernels and embedding tables). Biases, LayerNorm scales/offsets
and other 1-D or scalar parameters are never decayed. Positional embeddings
are usually stored as ``[1, N, D]`` arrays and are therefore decayed; give them
a 1-D shape if that is not wanted.

* ``sgd``: ``clip -> add_decayed_weights(wd, mask) -> sgd(schedule, momentum)``.
  The decay term is added to the gradient before momentum, i.e. the
  conventional "SGD with weight decay" (equivalent to L2 regularisation).
* ``adamw``: ``clip -> adamw(schedule, b1, b2, wd, mask)``: decoupled decay
  applied after the Adam normalisation and scaled by the learning rate.

Freezing: with ``trainable_patterns`` (regexes searched in '/'-joined parameter
paths) only matching parameters train; the chain above runs on them alone (its
clipping norm and optimiser state included), and every other parameter gets an
exact zero update, so it stays bitwise unchanged and is never decayed. Empty
means everything trains.

Layer-wise learning-rate decay (``layer_decay`` < 1): the update of a parameter
in layer ``l`` is scaled by ``layer_decay ** (L + 1 - l)``, where ``L`` is the
number of blocks, ``l = i + 1`` for parameters under a ``*block_<i>`` module,
``l = 0`` for the stem (patch embedding, class token, position embedding,
``ln_pre``) and ``l = L + 1`` (scale 1) for everything else (final norms,
heads). Block indices are read from the names, so the blocks of parallel
stacks (CAST's two experts and its cross blocks) share a layer.
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

__all__ = [
    "StepPlan",
    "plan_steps",
    "build_optimizer",
    "weight_decay_mask",
    "trainable_mask",
    "zero_frozen",
    "scale_by_layer_decay",
]

Schedule = Callable[[Any], jax.Array]

_KNOWN_OPTIMIZERS = ("sgd", "adamw")


def _check_number(cfg: Mapping[str, Any], field: str, *, minimum: float | None = None) -> float:
  value = cfg[field]
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise ValueError(f"optimizer.{field} must be a finite number, got {value!r}")
  if minimum is not None and value < minimum:
    raise ValueError(f"optimizer.{field} must be >= {minimum}, got {value!r}")
  return float(value)


def _as_int(value: Any) -> int | None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    return None
  return int(value)


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """A run's length and warmup in steps, with the settings they came from.

  Attributes:
    total_steps: optimisation steps of the whole run.
    warmup_steps: linear-warmup steps.
    steps_per_epoch: train examples / global batch (fractional: the schedule counts
      epochs as examples seen, not as whole batches).
    total_source: how `total_steps` was set, e.g. `'train.num_train_steps'` or
      `'30 epochs'`.
    warmup_source: how `warmup_steps` was set, e.g. `'optimizer.warmup_steps'` or
      `'2.5 epochs'`.
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

  Epoch counts become steps from the train split's actual size and
  `train.global_batch_size`: `ceil(epochs * num_train_examples / global_batch_size)`.
  `optimizer.warmup_epochs` < 0 means warmup is given in steps.

  Args:
    config: the root experiment config.
    num_train_examples: the train split's size.
    training: False for evaluation and inference, which never fail on the
      schedule: an ambiguous or too long warmup becomes 0 steps there.

  Returns:
    The plan.

  Raises:
    ValueError (when training): both warmup settings are given, or the warmup is not
      shorter than the run; the message shows the effective numbers.
  """
  tr, opt = config.train, config.optimizer
  batch = int(tr.global_batch_size)
  per_epoch = num_train_examples / batch if batch > 0 else 0.0
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


def _refuse_epochs(cfg: Mapping[str, Any]) -> None:
  """Warmup in epochs needs the dataset's size, which only a whole run knows."""
  if _check_number(cfg, "warmup_epochs") >= 0:
    raise ValueError(f"optimizer.warmup_epochs={cfg['warmup_epochs']} needs the train split's "
                     "size: build the run with vivit_knn.train.experiment.build_experiment "
                     "(or give optimizer.warmup_steps)")


def _make_schedule(cfg: Mapping[str, Any], total_steps: int) -> Schedule:
  """Linear warmup from 0 to ``base_learning_rate``, then a half cosine to ``end_learning_rate``.

  The learning rate is ``base * step / warmup_steps`` for ``step < warmup_steps``,
  follows the cosine from ``base_learning_rate`` (at ``warmup_steps``) to
  ``end_learning_rate`` (at ``total_steps``) and stays there beyond.
  """
  total = _as_int(total_steps)
  if total is None or total <= 0:
    raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
  total_steps = total
  base = _check_number(cfg, "base_learning_rate", minimum=0.0)
  end = _check_number(cfg, "end_learning_rate", minimum=0.0)
  warmup = _as_int(cfg["warmup_steps"])
  if warmup is None or warmup < 0:
    raise ValueError(
        f"optimizer.warmup_steps must be a non-negative integer, got {cfg['warmup_steps']!r}"
    )
  if warmup >= total_steps:
    raise ValueError(
        f"optimizer.warmup_steps ({warmup}) must be smaller than total_steps ({total_steps})"
    )
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
  """Pytree of booleans: ``True`` where a pattern matches the parameter's path (all if none).

  Raises:
    ValueError: naming ``optimizer.trainable_patterns`` when the patterns match
      no parameter (or one is not a valid regex).
  """
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

  Applied to gradients inside the jitted step, it lets XLA drop the weight
  gradients of frozen parameters (about a third of a frozen layer's backward
  pass) and keeps them out of the logged gradient norm.
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
  for name in names:
    match = _BLOCK_NAME.search(name)
    if match:
      return int(match.group(1)) + 1
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

  def update_fn(updates, state, params=None):
    del params
    ids, top = _layers(updates)
    updates = jax.tree.map(lambda u, l: u * jnp.asarray(decay ** (top - l), u.dtype),
                           updates, ids)
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def build_optimizer(config: Any, total_steps: int, warmup_steps: int | None = None
                    ) -> tuple[optax.GradientTransformation, Schedule]:
  """Builds the gradient transformation and its learning-rate schedule.

  Chain: optional global-norm clipping (``grad_clip_norm``; ``None`` or
  ``<= 0`` disables it), weight decay on ``ndim > 1`` parameters (see the
  module docstring for how it differs between ``sgd`` and ``adamw``), then
  the optimiser driven by the warmup-cosine schedule; restricted to
  ``trainable_patterns`` and followed by the ``layer_decay`` scaling when those
  are set.

  Args:
    config: the checked ``config.optimizer`` section (a ``ConfigDict`` or mapping with
      every key of ``vivit_knn.config.optimizer_config``).
    total_steps: total number of optimisation steps.
    warmup_steps: the warmup in steps when the run computed it (see
      :func:`plan_steps`); it replaces ``warmup_steps`` and ``warmup_epochs``.
      None: the config's ``warmup_steps``, and ``warmup_epochs`` must be unset.

  Returns:
    ``(tx, schedule)``; ``schedule(step)`` gives the learning rate used for
    the update with optimiser step count ``step`` (0-based).

  Raises:
    ValueError: for an unknown ``optimizer.name`` or invalid field values.
  """
  cfg = dict(config.items())
  if warmup_steps is not None:
    cfg["warmup_steps"], cfg["warmup_epochs"] = warmup_steps, -1.0
  _refuse_epochs(cfg)
  name = cfg["name"]
  if not isinstance(name, str) or name.lower() not in _KNOWN_OPTIMIZERS:
    raise ValueError(f"optimizer.name must be one of {_KNOWN_OPTIMIZERS}, got {name!r}")
  name = name.lower()
  schedule = _make_schedule(cfg, total_steps)
  weight_decay = _check_number(cfg, "weight_decay", minimum=0.0)

  clip = cfg["grad_clip_norm"]
  clip = 0.0 if clip is None else _check_number(cfg, "grad_clip_norm")
  # Off is an identity step rather than no step: both keep an empty state, so the
  # optimizer state has one layout and a resume may turn clipping on or off.
  parts: list[optax.GradientTransformation] = [
      optax.clip_by_global_norm(clip) if clip > 0 else optax.identity()]

  if name == "sgd":
    momentum = _check_number(cfg, "momentum", minimum=0.0)
    if momentum >= 1.0:
      raise ValueError(f"optimizer.momentum must be < 1, got {momentum}")
    if weight_decay > 0:
      parts.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
    parts.append(
        optax.sgd(
            schedule,
            momentum=momentum if momentum > 0 else None,
            nesterov=bool(cfg["nesterov"]),
        )
    )
  else:
    beta1 = _check_number(cfg, "beta1", minimum=0.0)
    beta2 = _check_number(cfg, "beta2", minimum=0.0)
    if beta1 >= 1.0:
      raise ValueError(f"optimizer.beta1 must be < 1, got {beta1}")
    if beta2 >= 1.0:
      raise ValueError(f"optimizer.beta2 must be < 1, got {beta2}")
    parts.append(
        optax.adamw(
            schedule,
            b1=beta1,
            b2=beta2,
            weight_decay=weight_decay,
            mask=weight_decay_mask,
        )
    )
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
