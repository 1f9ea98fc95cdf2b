"""Jitted train and eval steps with explicit shardings on the experiment's mesh."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from vivit_knn.data.processors import average_view_logits
from vivit_knn.train import losses, metrics, optim, sharding
from vivit_knn.weights.tree import key_name
from vivit_knn.train.experiment import Experiment, TrainState


FINITE = "state_finite"  # metrics key: 1.0 when every updated parameter and moment is finite


def _finite(x: jax.Array) -> jax.Array:
  return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)


def first_nonfinite_leaf(tree: Any) -> Optional[str]:
  """The '/'-joined path of the first leaf of `tree` holding a NaN or inf, or None."""
  flags = jax.device_get(jax.jit(lambda t: jax.tree.map(_finite, t))(tree))
  for key_path, ok in jax.tree_util.tree_leaves_with_path(flags):
    if not bool(ok):
      return key_name(key_path)
  return None


def make_train_step(exp: Experiment, frozen: Any = None, phase: str = "main") -> Callable[
    [TrainState, Dict, jax.Array, Any], Tuple[TrainState, Dict]]:
  """Returns `step(state, batch, rng, frozen) -> (state, metrics)`, jitted, state donated.

  `frozen`: the objective's frozen parameters (a teacher) for `phase`, the same tree at every
  call. All randomness comes from `fold_in(rng, state.step)`, so a resumed run draws what the
  uninterrupted one would have. Each objective term is reported as `loss/<name>`.
  """
  cfg = exp.config
  accum = cfg.train.grad_accum_steps
  frozen_patterns = tuple(cfg.optimizer.trainable_patterns or ())

  def step_fn(state: TrainState, batch: Dict, rng: jax.Array, frozen: Any):
    step_rng = jax.random.fold_in(rng, state.step)
    mix_rng, dropout_rng, objective_rng = jax.random.split(step_rng, 3)
    targets = losses.one_hot(batch["label"], exp.num_classes,
                             label_smoothing=cfg.loss.label_smoothing)
    inputs = batch["inputs"]
    if cfg.loss.mixup_alpha > 0:
      inputs, targets, _ = losses.mixup_with_lambda(mix_rng, inputs, targets,
                                                    cfg.loss.mixup_alpha)

    def loss_fn(params, micro):
      inputs, targets, index = micro
      logits, intermediates = exp.model.apply(
          {"params": params}, inputs, train=True,
          rngs={"dropout": jax.random.fold_in(dropout_rng, index)})
      loss, terms = exp.objective(
          frozen, phase=phase, inputs=inputs, targets=targets, logits=logits,
          intermediates=intermediates, step=state.step,
          rng=jax.random.fold_in(objective_rng, index))
      return loss, (logits, terms)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
      (loss, (logits, terms)), grads = grad_fn(state.params, (inputs, targets, 0))
    else:
      (loss, (logits, terms)), grads = _accumulate(grad_fn, state.params, inputs, targets, accum)
    # Frozen parameters (optimizer.trainable_patterns) get constant-zero gradients: XLA
    # drops their weight-gradient work and they stay out of the logged gradient norm.
    grads = optim.zero_frozen(grads, frozen_patterns)
    updates, opt_state = exp.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {
        "loss": loss,
        "top1": jnp.mean(metrics.topk_correct(logits, batch["label"], 1)),
        "top5": jnp.mean(metrics.topk_correct(logits, batch["label"], 5)),
        "learning_rate": exp.schedule(state.step),
        "grad_norm": optax.tree.norm(grads),
        **{f"loss/{name}": value for name, value in terms.items()},
        # A cheap reduction over the updated state: only finite states may be saved.
        FINITE: jnp.all(jnp.stack([_finite(x) for x in jax.tree.leaves((params, opt_state))])
                        ).astype(jnp.float32),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), out

  state_sh = exp.state_shardings()
  batch_sh = sharding.batch_sharding(exp.mesh)
  rep = sharding.replicated(exp.mesh)
  frozen = {} if frozen is None else frozen
  jitted = jax.jit(step_fn, in_shardings=(state_sh, batch_sh, rep,
                                          exp.objective.frozen_shardings(exp, frozen)),
                   out_shardings=(state_sh, rep), donate_argnums=(0,))

  def train_step(state, batch, rng, frozen_params=None):
    with sharding.layout(exp.mesh, exp.config.mesh):  # activations follow mesh.rules too
      return jitted(state, batch, rng, frozen if frozen_params is None else frozen_params)

  def lower(state, batch, rng, frozen_params=None):
    """The step lowered for these arguments (for its compiled HLO and memory analysis)."""
    with sharding.layout(exp.mesh, exp.config.mesh):
      return jitted.lower(state, batch, rng, frozen if frozen_params is None else frozen_params)

  train_step.lower = lower
  return train_step


def _accumulate(grad_fn, params, inputs, targets, accum: int):
  """Mean loss, outputs and gradients over `accum` equal micro-batches, one at a time.

  Micro-batch i takes rows i, i+accum, ...: every device's slice contributes equally to each.
  """
  b = inputs.shape[0]

  def split(x):
    return jnp.swapaxes(x.reshape((b // accum, accum) + x.shape[1:]), 0, 1)

  def body(carry, micro):
    (loss, (logits, terms)), grads = grad_fn(params, micro)
    carry = jax.tree.map(jnp.add, carry, (loss, terms, grads))
    return carry, logits

  micro = (split(inputs), split(targets), jnp.arange(accum))
  (loss_shape, (_, terms_shape)), grads_shape = jax.eval_shape(
      grad_fn, params, jax.tree.map(lambda x: x[0], micro))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       (loss_shape, terms_shape, grads_shape))
  (loss, terms, grads), logits = jax.lax.scan(body, zeros, micro)
  mean = lambda t: jax.tree.map(lambda x: x / accum, t)
  logits = jnp.swapaxes(logits, 0, 1).reshape((b,) + logits.shape[2:])
  return (mean(loss), (logits, mean(terms))), mean(grads)


def predict_views(exp: Experiment, params, inputs: jax.Array) -> jax.Array:
  """Logits for clips `[B, T, H, W, C]`, or view-averaged logits for `[B, V, T, H, W, C]`.

  The views of each video are folded into the batch, so any number of views
  fits any batch size; their logits are averaged before scoring.
  """
  views = inputs.shape[1] if inputs.ndim == 6 else 0
  clips = inputs.reshape((-1,) + inputs.shape[2:]) if views else inputs
  logits = exp.model.apply({"params": params}, clips, train=False)[0].astype(jnp.float32)
  return average_view_logits(logits, views) if views else logits


def make_eval_step(exp: Experiment) -> Callable[[object, Dict], Dict]:
  """Returns `step(params, batch) -> {logits, label, mask}`, gathered on every host."""

  def step_fn(params, batch):
    logits = predict_views(exp, params, batch["inputs"])
    return {"logits": logits, "label": batch["label"], "mask": batch["mask"]}

  jitted = jax.jit(step_fn, in_shardings=(exp.state_shardings().params,
                                          sharding.batch_sharding(exp.mesh)),
                   out_shardings=sharding.replicated(exp.mesh))

  def eval_step(params, batch):
    with sharding.layout(exp.mesh, exp.config.mesh):
      return jitted(params, batch)

  return eval_step
