"""Distillation numerics against numpy: CE, KL(teacher||student) at tau, feature MSE, OFA,
the tubelet average of the teacher's frame maps and the stage-1/2 objective's terms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import load_config
from vivit_knn.train import losses
from vivit_knn.train.distill import STAGE1, STAGE2, DistillObjective, tubelet_average

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
  """-(1 + p_t[y])^eta log p_s[y] - sum_{c != y} p_t[c] log p_s[c], batch mean."""
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
  want = -(soft_target * np.log(_np_softmax(s))).sum(-1).mean()
  np.testing.assert_allclose(got, want, rtol=1e-5)
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
  other = np.roll(LABELS, 1)
  a, b = _one_hot(LABELS), _one_hot(other)
  lam = 0.3
  mixed = losses.ofa_loss(s, t, lam * a + (1 - lam) * b, 1.1)
  want = lam * _np_ofa(s, t, LABELS, 1.1) + (1 - lam) * _np_ofa(s, t, other, 1.1)
  np.testing.assert_allclose(mixed, want, rtol=1e-5)


def _np_tubelet_average(maps, num_tubelets):
  """Tubelet k holds frames [k*g, (k+1)*g) with g = T / num_tubelets (consecutive frames)."""
  g = maps.shape[1] // num_tubelets
  return np.stack([maps[:, k * g:(k + 1) * g].mean(axis=1) for k in range(num_tubelets)], 1)


@pytest.mark.parametrize("num_tubelets", [1, 2, 4, 8])
def test_tubelet_average_means_consecutive_frames(num_tubelets):
  maps = np.random.default_rng(9).normal(size=(2, 8, 3, 3, 5)).astype(np.float32)
  got = np.asarray(tubelet_average(jnp.asarray(maps), num_tubelets))
  assert got.shape == (2, num_tubelets, 3, 3, 5)
  np.testing.assert_allclose(got, _np_tubelet_average(maps, num_tubelets), rtol=1e-6, atol=1e-6)
  if num_tubelets == 4:  # frames (0, 1), (2, 3), ...: not (0, 4), (1, 5), ...
    strided = maps.reshape(2, 2, 4, 3, 3, 5).mean(axis=1)
    assert np.abs(got - strided).mean() > 0.1


def test_tubelet_average_rejects_frames_that_do_not_split():
  with pytest.raises(ValueError, match="do not split"):
    tubelet_average(jnp.zeros((1, 6, 2, 2, 3)), 4)


def _np_kl(s, t, tau):
  ps, pt = _np_softmax(s / tau), _np_softmax(t / tau)
  return tau ** 2 * (pt * (np.log(pt) - np.log(ps))).sum(-1).mean()


def _np_ce(s, targets):
  return -(targets * np.log(_np_softmax(s))).sum(-1).mean()


def _objective(method, teacher_logits, teacher_maps):
  """The synthetic TSD objective with a stand-in teacher returning fixed outputs."""
  config = load_config("synthetic_tsd")
  config.distill.method = method
  config.distill.alpha, config.distill.beta, config.distill.tau = 0.3, 0.7, 2.0
  objective = DistillObjective(config)
  objective.teacher_outputs = lambda frozen, phase, inputs: (
      jnp.asarray(teacher_logits), None if phase == STAGE2 else jnp.asarray(teacher_maps))
  return objective, config.distill


def _call(objective, phase, s, targets, intermediates):
  return objective(None, phase=phase, inputs=jnp.zeros((B, 4, 8, 8, 3)),
                   targets=jnp.asarray(targets), logits=jnp.asarray(s),
                   intermediates=intermediates, step=jnp.int32(0), rng=jax.random.key(0))


def test_fad_objective_matches_numpy():
  rng = np.random.default_rng(10)
  s, t = _logits(11), _logits(12)
  targets = _one_hot(LABELS)
  maps = rng.normal(size=(B, 8, 3, 3, 16)).astype(np.float32)  # per-frame teacher layer4
  aligned = rng.normal(size=(B, 4, 3, 3, 16)).astype(np.float32)  # one map per tubelet
  objective, d = _objective("fad", t, maps)
  loss, terms = _call(objective, STAGE1, s, targets, {"aligned": jnp.asarray(aligned)})
  fad = ((aligned - _np_tubelet_average(maps, 4)) ** 2).mean()
  assert fad > 0.5  # the tubelet average is far from the aligner output here
  ce, kd = _np_ce(s, targets), _np_kl(s, t, d.tau)
  assert set(terms) == {"ce", "kd", "fad"}
  np.testing.assert_allclose(terms["fad"], fad, rtol=1e-5)
  np.testing.assert_allclose(terms["ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(terms["kd"], kd, rtol=1e-5)
  np.testing.assert_allclose(loss, d.alpha * ce + (1 - d.alpha) * kd + d.beta * fad, rtol=1e-5)
  # The feature term pulls the aligner output towards the tubelet average only.
  grad = jax.grad(lambda a: _call(objective, STAGE1, s, targets, {"aligned": a})[0])(
      jnp.asarray(aligned))
  want = d.beta * 2.0 * (aligned - _np_tubelet_average(maps, 4)) / aligned.size
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-8)


def test_fpld_objective_matches_numpy():
  s, t = _logits(13), _logits(14)
  targets = _one_hot(LABELS)
  branches = np.stack([_logits(20 + i) for i in range(4)])
  objective, d = _objective("fpld", t, np.zeros((B, 8, 1, 1, 1), np.float32))
  loss, terms = _call(objective, STAGE1, s, targets, {"branch_logits": jnp.asarray(branches)})
  per_branch = [_np_ofa(b, t, LABELS, d.eta) for b in branches]
  for i, want in enumerate(per_branch):
    np.testing.assert_allclose(terms[f"ofa_{i}"], want, rtol=1e-5)
  ce, kd = _np_ce(s, targets), _np_kl(s, t, d.tau)
  np.testing.assert_allclose(loss, d.alpha * ce + (1 - d.alpha) * kd
                             + d.beta * np.mean(per_branch), rtol=1e-5)


def test_stage2_objective_is_logit_distillation_only():
  s, t = _logits(15), _logits(16)
  targets = _one_hot(LABELS)
  objective, d = _objective("fad", t, None)
  aligned = jnp.ones((B, 4, 3, 3, 16))
  loss, terms = _call(objective, STAGE2, s, targets, {"aligned": aligned})
  assert set(terms) == {"ce", "kd"}
  np.testing.assert_allclose(
      loss, d.alpha * _np_ce(s, targets) + (1 - d.alpha) * _np_kl(s, t, d.tau), rtol=1e-5)
