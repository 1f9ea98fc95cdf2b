"""Tests for vivit_knn.train.optim."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vivit_knn import config as config_lib
from vivit_knn.train import optim


def _config(**overrides):
  """An optimiser section: the defaults (SGD) with the named fields changed."""
  return {**config_lib.optimizer_config().to_dict(), "name": "sgd", **overrides}


def _schedule(cfg, total_steps):
  return optim.build_optimizer(cfg, total_steps)[1]


def _np_lr(step, base, total, warmup=0, end=0.0):
  """The documented schedule: linear warmup from 0, then a half cosine from base to end."""
  if step < warmup:
    return base * step / warmup
  progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
  return end + (base - end) * 0.5 * (1 + math.cos(math.pi * progress))


def test_schedule_warmup_and_cosine():
  base, end, warmup, total = 0.4, 0.01, 10, 110
  cfg = _config(base_learning_rate=base, end_learning_rate=end, warmup_steps=warmup)
  sched = _schedule(cfg, total)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(5)), base * 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(sched(warmup)), base, rtol=1e-6)
  # Midpoint of the cosine phase is halfway between base and end.
  np.testing.assert_allclose(float(sched(warmup + 50)), (base + end) / 2, rtol=1e-5)
  quarter = end + (base - end) * 0.5 * (1 + math.cos(math.pi * 0.25))
  np.testing.assert_allclose(float(sched(warmup + 25)), quarter, rtol=1e-5)
  np.testing.assert_allclose(float(sched(total)), end, rtol=1e-5)
  np.testing.assert_allclose(float(sched(total + 100)), end, rtol=1e-5)
  # Works on traced step counts.
  np.testing.assert_allclose(float(jax.jit(sched)(jnp.int32(warmup))), base, rtol=1e-6)


def test_schedule_without_warmup_starts_at_base():
  sched = _schedule(_config(base_learning_rate=0.1, warmup_steps=0), 100)
  np.testing.assert_allclose(float(sched(0)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(sched(100)), 0.0, atol=1e-7)


@pytest.mark.parametrize(
    "overrides,total,field",
    [
        ({"warmup_steps": 100}, 100, "optimizer.warmup_steps"),
        ({"warmup_steps": -1}, 100, "optimizer.warmup_steps"),
        ({"base_learning_rate": -0.1}, 100, "optimizer.base_learning_rate"),
        ({"end_learning_rate": -1.0}, 100, "optimizer.end_learning_rate"),
        ({}, 0, "total_steps"),
    ],
)
def test_schedule_validation_names_field(overrides, total, field):
  with pytest.raises(ValueError, match=field):
    _schedule(_config(**overrides), total)


def test_unknown_field_is_named_with_a_suggestion():
  config = config_lib.base_config()
  config.optimizer.momentun = 0.5
  with pytest.raises(ValueError, match=r"optimizer\.momentun.*did you mean 'optimizer\.momentum'"):
    config_lib.check_keys(config)


def test_unknown_optimizer_name():
  with pytest.raises(ValueError, match="optimizer.name"):
    optim.build_optimizer(_config(name="lamb"), 10)


def _quadratic_grad(w, target):
  # Gradient of 0.5 * ||w - target||^2.
  return w - target


def _run_optax(tx, params, target, steps):
  state = tx.init(params)
  history = []
  for _ in range(steps):
    grads = jax.tree.map(_quadratic_grad, params, target)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append(jax.tree.map(np.asarray, params))
  return history


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_numpy(nesterov):
  lr, mom, total = 0.1, 0.9, 100
  cfg = _config(base_learning_rate=lr, momentum=mom, nesterov=nesterov, grad_clip_norm=None,
                warmup_steps=0, end_learning_rate=0.0, weight_decay=0.0)
  tx, sched = optim.build_optimizer(cfg, total)
  w0 = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
  target = np.array([[0.0, 1.0], [1.0, -1.0]], np.float32)
  history = _run_optax(tx, {"w": jnp.asarray(w0)}, {"w": jnp.asarray(target)}, 2)

  w = w0.astype(np.float64)
  trace = np.zeros_like(w)
  for step in range(2):
    g = w - target
    trace = g + mom * trace
    direction = g + mom * trace if nesterov else trace
    w = w - _np_lr(step, lr, total) * direction
    np.testing.assert_allclose(history[step]["w"], w, rtol=1e-5)
  assert float(sched(1)) < lr  # the cosine has started decaying


def test_sgd_clipping_and_weight_decay_match_numpy():
  lr, mom, clip, wd, total = 0.5, 0.9, 1.0, 0.01, 1000
  cfg = _config(base_learning_rate=lr, momentum=mom, grad_clip_norm=clip, weight_decay=wd,
                nesterov=False, warmup_steps=0, end_learning_rate=0.0)
  tx, _ = optim.build_optimizer(cfg, total)
  params = {"kernel": jnp.array([[3.0, -4.0]]), "bias": jnp.array([2.0])}
  target = {"kernel": jnp.zeros((1, 2)), "bias": jnp.zeros(1)}
  history = _run_optax(tx, params, target, 2)

  k, b = np.array([[3.0, -4.0]]), np.array([2.0])
  tk, tb = np.zeros_like(k), np.zeros_like(b)
  for step in range(2):
    gk, gb = k.copy(), b.copy()
    norm = math.sqrt((gk**2).sum() + (gb**2).sum())
    assert norm > clip  # clipping must be active in this test
    gk, gb = gk * clip / norm, gb * clip / norm
    gk = gk + wd * k  # decay on the 2-D kernel only
    tk, tb = gk + mom * tk, gb + mom * tb
    lr_t = _np_lr(step, lr, total)
    k, b = k - lr_t * tk, b - lr_t * tb
    np.testing.assert_allclose(history[step]["kernel"], k, rtol=1e-5)
    np.testing.assert_allclose(history[step]["bias"], b, rtol=1e-5)


def test_clipping_disabled_with_nonpositive_value():
  cfg = _config(base_learning_rate=1.0, momentum=0.0, grad_clip_norm=0.0, weight_decay=0.0,
                warmup_steps=0)
  tx, _ = optim.build_optimizer(cfg, 10)
  params = {"w": jnp.array([10.0, 0.0])}
  grads = {"w": jnp.array([10.0, 0.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), [-10.0, 0.0], rtol=1e-6)


def test_adamw_runs_and_skips_decay_on_1d_params():
  lr, wd = 0.1, 0.5
  cfg = _config(name="adamw", base_learning_rate=lr, weight_decay=wd)
  tx, sched = optim.build_optimizer(cfg, 50)
  params = {
      "kernel": jnp.full((2, 3), 2.0),
      "bias": jnp.full((3,), 2.0),
      "scale": jnp.full((3,), 2.0),
      "pos_embedding": jnp.full((1, 4, 3), 2.0),
  }
  zeros = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  updates, state = tx.update(zeros, state, params)
  # Zero gradients make the Adam step zero, so only decoupled decay remains.
  np.testing.assert_allclose(np.asarray(updates["kernel"]), -lr * wd * 2.0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(updates["pos_embedding"]), -lr * wd * 2.0, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(updates["bias"]), 0.0)
  np.testing.assert_array_equal(np.asarray(updates["scale"]), 0.0)

  # A few real steps under jit reduce a quadratic loss.
  target = jax.tree.map(jnp.zeros_like, params)

  def loss_fn(q):
    diffs = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), q, target)
    return sum(jax.tree.leaves(diffs))

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  state = tx.init(params)
  p, first = params, None
  for _ in range(5):
    p, state, loss = step(p, state)
    first = loss if first is None else first
  assert float(loss) < float(first)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(p))


def test_weight_decay_mask():
  mask = optim.weight_decay_mask({"a": jnp.zeros((2, 2)), "b": jnp.zeros(2), "c": jnp.zeros(())})
  assert mask == {"a": True, "b": False, "c": False}

