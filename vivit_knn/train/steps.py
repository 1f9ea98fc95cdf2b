"""Jitted train and eval steps with explicit shardings on the experiment's mesh."""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from vivit_knn.data.views import average_view_logits
from vivit_knn.train import losses, metrics, sharding
from vivit_knn.train.experiment import Experiment, TrainState


def make_train_step(exp: Experiment) -> Callable[[TrainState, Dict, jax.Array],
                                                  Tuple[TrainState, Dict]]:
  """Returns `step(state, batch, rng) -> (state, metrics)`, jitted with donated state.

  The step's randomness (mixup, dropout) is `fold_in(rng, state.step)`, so a
  resumed run draws exactly what the uninterrupted run would have.
  """
  cfg = exp.config
  num_classes = exp.num_classes

  def step_fn(state: TrainState, batch: Dict, rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)
    mix_rng, dropout_rng = jax.random.split(step_rng)
    targets = losses.one_hot(batch["label"], num_classes,
                             label_smoothing=cfg.loss.label_smoothing)
    inputs = batch["inputs"]
    if cfg.loss.mixup_alpha > 0:
      inputs, targets = losses.mixup(mix_rng, inputs, targets, cfg.loss.mixup_alpha)

    def loss_fn(params):
      logits, _ = exp.model.apply({"params": params}, inputs, train=True,
                                  rngs={"dropout": dropout_rng})
      return losses.softmax_cross_entropy(logits, targets), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = exp.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {
        "loss": loss,
        "top1": jnp.mean(metrics.topk_correct(logits, batch["label"], 1)),
        "top5": jnp.mean(metrics.topk_correct(logits, batch["label"], 5)),
        "learning_rate": exp.schedule(state.step),
        "grad_norm": optax.global_norm(grads),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), out

  state_sh = exp.state_shardings()
  batch_sh = sharding.batch_sharding(exp.mesh)
  rep = sharding.replicated(exp.mesh)
  return jax.jit(step_fn, in_shardings=(state_sh, batch_sh, rep),
                 out_shardings=(state_sh, rep), donate_argnums=(0,))


def predict_views(exp: Experiment, params, inputs: jax.Array) -> jax.Array:
  """Logits for clips `[B, T, H, W, C]`, or view-averaged logits for `[B, V, T, H, W, C]`.

  The views of each video are folded into the batch, so any number of views
  fits any batch size; their logits are averaged before scoring.
  """
  if inputs.ndim == 6:
    b, v = inputs.shape[:2]
    logits, _ = exp.model.apply({"params": params}, inputs.reshape((b * v,) + inputs.shape[2:]),
                                train=False)
    return average_view_logits(logits.astype(jnp.float32), v)
  logits, _ = exp.model.apply({"params": params}, inputs, train=False)
  return logits.astype(jnp.float32)


def make_eval_step(exp: Experiment) -> Callable[[object, Dict], Dict]:
  """Returns `step(params, batch) -> {logits, label, mask}`, gathered on every host."""

  def step_fn(params, batch):
    logits = predict_views(exp, params, batch["inputs"])
    return {"logits": logits, "label": batch["label"], "mask": batch["mask"]}

  batch_sh = sharding.batch_sharding(exp.mesh)
  return jax.jit(step_fn, in_shardings=(exp.state_shardings().params, batch_sh),
                 out_shardings=sharding.replicated(exp.mesh))
