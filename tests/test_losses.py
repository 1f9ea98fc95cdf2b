"""Tests for vivit_knn.train.losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import load_config
from vivit_knn import config as config_lib
from vivit_knn.train import losses


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  shifted = x - x.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_ce(logits, targets, weights=None):
  per = -(np.asarray(targets, np.float64) * _np_log_softmax(logits)).sum(-1)
  w = np.ones_like(per) if weights is None else np.asarray(weights, np.float64)
  return (w * per).sum() / max(w.sum(), 1e-8)


def _np_one_hot(labels, c, smoothing=0.0):
  """Smoothed one-hot targets: 1 - s + s / c on the label, s / c elsewhere."""
  return (1 - smoothing) * np.eye(c)[np.asarray(labels)] + smoothing / c


def test_one_hot_without_smoothing():
  out = losses.one_hot(jnp.array([2, 0]), 4)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), [[0, 0, 1, 0], [1, 0, 0, 0]])


def test_one_hot_smoothing_values():
  ls, c = 0.1, 5
  out = np.asarray(losses.one_hot(jnp.array([3, 1]), c, label_smoothing=ls))
  on, off = 1 - ls + ls / c, ls / c
  expected = np.full((2, c), off)
  expected[0, 3] = on
  expected[1, 1] = on
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)


def test_one_hot_rejects_bad_smoothing():
  config = load_config("synthetic_tiny")
  config.loss.label_smoothing = 1.0  # checked once, with the config, before anything is built
  with pytest.raises(ValueError, match="loss.label_smoothing"):
    config_lib.check_training(config, num_devices=1)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_numpy(smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 7)).astype(np.float32) * 3
  labels = rng.integers(0, 7, size=6)
  targets = _np_one_hot(labels, 7, smoothing).astype(np.float32)
  got = float(losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)))
  np.testing.assert_allclose(got, _np_ce(logits, targets), rtol=1e-5)
  got2 = float(losses.softmax_cross_entropy(
      jnp.asarray(logits), losses.one_hot(jnp.asarray(labels), 7, label_smoothing=smoothing)))
  np.testing.assert_allclose(got2, _np_ce(logits, targets), rtol=1e-5)


def test_cross_entropy_with_weights_including_zero():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=5)
  weights = np.array([1.0, 0.0, 2.0, 0.0, 0.5], np.float32)
  targets = np.eye(4, dtype=np.float32)[labels]
  got = float(losses.softmax_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)))
  np.testing.assert_allclose(got, _np_ce(logits, targets, weights), rtol=1e-5)
  # Zero-weight rows must not influence the value at all.
  logits_changed = logits.copy()
  logits_changed[[1, 3]] = 100.0 * rng.normal(size=(2, 4))
  got_changed = float(losses.softmax_cross_entropy(
      jnp.asarray(logits_changed), jnp.asarray(targets), jnp.asarray(weights)))
  np.testing.assert_allclose(got_changed, got, rtol=1e-6)


def test_cross_entropy_all_zero_weights_is_finite_zero():
  logits = jnp.ones((3, 4))
  targets = jax.nn.one_hot(jnp.array([0, 1, 2]), 4)
  out = losses.softmax_cross_entropy(logits, targets, jnp.zeros(3))
  assert float(out) == 0.0


def test_cross_entropy_upcasts_bfloat16():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  targets = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
  bf = jnp.asarray(logits, jnp.bfloat16)
  out = losses.softmax_cross_entropy(bf, jnp.asarray(targets))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(float(out), _np_ce(np.asarray(bf, np.float32), targets), rtol=1e-5)


def _mixup_data():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4, 2, 3, 3, 1)).astype(np.float32)
  labels = np.array([0, 2, 1, 2])
  t = _np_one_hot(labels, 3, 0.1).astype(np.float32)
  return x, t


def test_mixup_matches_numpy_reference():
  x, t = _mixup_data()
  key = jax.random.PRNGKey(42)
  mx, mt, lam = losses.mixup_with_lambda(key, jnp.asarray(x), jnp.asarray(t), 0.8)
  lam = float(lam)
  assert 0.0 < lam < 1.0
  np.testing.assert_allclose(np.asarray(mx), lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(mt), lam * t + (1 - lam) * t[::-1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(mt).sum(-1), 1.0, rtol=1e-5)
  # The same key mixes exactly the same way.
  mx2, mt2, _ = losses.mixup_with_lambda(key, jnp.asarray(x), jnp.asarray(t), 0.8)
  np.testing.assert_array_equal(np.asarray(mx2), np.asarray(mx))
  np.testing.assert_array_equal(np.asarray(mt2), np.asarray(mt))


def test_mixup_lambda_varies_with_key():
  x, t = _mixup_data()
  lams = set()
  for seed in range(5):
    _, _, lam = losses.mixup_with_lambda(
        jax.random.PRNGKey(seed), jnp.asarray(x), jnp.asarray(t), 1.0)
    lams.add(round(float(lam), 6))
  assert len(lams) > 1


def test_mixup_alpha_zero_is_identity():
  x, t = _mixup_data()
  mx, mt, _ = losses.mixup_with_lambda(jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(t), 0.0)
  np.testing.assert_array_equal(np.asarray(mx), x)
  np.testing.assert_array_equal(np.asarray(mt), t)
  _, _, lam = losses.mixup_with_lambda(jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(t), -1.0)
  assert float(lam) == 1.0


def test_mixup_under_jit():
  x, t = _mixup_data()
  key = jax.random.PRNGKey(7)
  fn = jax.jit(lambda k, a, b: losses.mixup_with_lambda(k, a, b, 0.4))
  mx, mt, lam = fn(key, jnp.asarray(x), jnp.asarray(t))
  eager = losses.mixup_with_lambda(key, jnp.asarray(x), jnp.asarray(t), 0.4)
  np.testing.assert_allclose(float(lam), float(eager[2]), rtol=1e-6)
  lam = float(lam)
  np.testing.assert_allclose(np.asarray(mx), lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(mt).sum(-1), 1.0, rtol=1e-5)


def test_mixup_keeps_bfloat16_dtype():
  x, t = _mixup_data()
  mx, mt, _ = losses.mixup_with_lambda(jax.random.PRNGKey(1), jnp.asarray(x, jnp.bfloat16),
                                       jnp.asarray(t), 1.0)
  assert mx.dtype == jnp.bfloat16
  assert mt.dtype == jnp.float32


def test_mixup_rejects_integer_targets():
  x, _ = _mixup_data()
  with pytest.raises(TypeError):
    losses.mixup_with_lambda(jax.random.PRNGKey(0), jnp.asarray(x), jnp.array([0, 1, 2, 0]), 1.0)
