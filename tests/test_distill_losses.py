"""Distillation losses against numpy: CE, KL(teacher||student) at tau, feature MSE, OFA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vivit_knn.train import losses

B, C = 6, 5


def _np_softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _logits(seed, scale=2.0):
  return np.random.default_rng(seed).normal(0, scale, (B, C)).astype(np.float32)


def _one_hot(labels):
  return np.eye(C, dtype=np.float32)[labels]


LABELS = np.array([0, 3, 1, 4, 2, 3])


def test_cross_entropy_matches_numpy():
  s = _logits(0)
  want = -(_one_hot(LABELS) * np.log(_np_softmax(s))).sum(-1).mean()
  np.testing.assert_allclose(losses.softmax_cross_entropy(s, _one_hot(LABELS)), want, rtol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kl_teacher_student_at_temperature_matches_numpy(tau):
  s, t = _logits(0), _logits(1)
  ps, pt = _np_softmax(s / tau), _np_softmax(t / tau)
  want = tau ** 2 * (pt * (np.log(pt) - np.log(ps))).sum(-1).mean()
  got = losses.distillation_kl(s, t, tau)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert float(losses.distillation_kl(t, t, tau)) == pytest.approx(0.0, abs=1e-6)
  # The teacher gets no gradient; the student's is tau * (p_s - p_t) / B.
  gs, gt = jax.grad(losses.distillation_kl, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t), tau)
  np.testing.assert_array_equal(gt, 0)
  np.testing.assert_allclose(gs, tau * (ps - pt) / B, rtol=1e-4, atol=1e-6)


def test_feature_mse_matches_numpy():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(2, 3, 4, 4, 8)), rng.normal(size=(2, 3, 4, 4, 8))
  np.testing.assert_allclose(losses.feature_mse(a, b), ((a - b) ** 2).mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="differ in shape"):
    losses.feature_mse(a, b[:1])


def _np_ofa(s, t, labels, eta):
  ps, pt = _np_softmax(s), _np_softmax(t)
  total = 0.0
  for i, y in enumerate(labels):
    total -= (1 + pt[i, y]) ** eta * np.log(ps[i, y])
    total -= sum(pt[i, c] * np.log(ps[i, c]) for c in range(C) if c != y)
  return total / len(labels)


def test_ofa_at_eta_one_is_soft_target_cross_entropy():
  s, t = _logits(3), _logits(4)
  targets = _one_hot(LABELS)
  soft_target = targets + _np_softmax(t)  # onehot(y) + p_t
  got = losses.ofa_loss(s, t, targets, eta=1.0)
  np.testing.assert_allclose(got, losses.softmax_cross_entropy(s, soft_target), rtol=1e-5)
  np.testing.assert_allclose(got, _np_ofa(s, t, LABELS, 1.0), rtol=1e-5)


@pytest.mark.parametrize("eta", [1.1, 1.5, 2.0])
def test_ofa_above_one_strengthens_the_target_term(eta):
  s, t = _logits(5), _logits(6)
  targets = _one_hot(LABELS)
  got = float(losses.ofa_loss(s, t, targets, eta=eta))
  np.testing.assert_allclose(got, _np_ofa(s, t, LABELS, eta), rtol=1e-5)
  assert got > float(losses.ofa_loss(s, t, targets, eta=1.0))
  # Only the target class's weight grows: its gradient pulls harder on log p_s[y].
  grad = lambda e: np.asarray(jax.grad(losses.ofa_loss)(jnp.asarray(s), t, targets, e))
  g1, ge = grad(1.0), grad(eta)
  rows = np.arange(B)
  assert np.all(ge[rows, LABELS] < g1[rows, LABELS])
  # A confident teacher gets a larger boost: (1 + p)^eta - (1 + p) grows with p.
  confident, unsure = np.full((1, C), -5.0), np.zeros((1, C))
  confident[0, 0] = 5.0
  one = _one_hot([0])
  boost = lambda tl: float(losses.ofa_loss(s[:1], tl, one, eta)
                           - losses.ofa_loss(s[:1], tl, one, 1.0))
  assert boost(confident) > boost(unsure) > 0


def test_ofa_interpolates_soft_targets_linearly():
  s, t = _logits(7), _logits(8)
  a, b = _one_hot(LABELS), _one_hot(np.roll(LABELS, 1))
  lam = 0.3
  mixed = losses.ofa_loss(s, t, lam * a + (1 - lam) * b, 1.1)
  np.testing.assert_allclose(mixed, lam * losses.ofa_loss(s, t, a, 1.1)
                             + (1 - lam) * losses.ofa_loss(s, t, b, 1.1), rtol=1e-5)
