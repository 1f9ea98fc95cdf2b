"""Classification and distillation losses and mixup, in pure `jax.numpy` (jit-able)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def one_hot(labels: jax.Array, num_classes: int, *, label_smoothing: float = 0.0) -> jax.Array:
  """float32 targets `labels.shape + (C,)`: `1 - ls + ls / C` on the label, `ls / C` elsewhere."""
  hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing > 0.0:
    hot = hot * (1.0 - label_smoothing) + label_smoothing / num_classes
  return hot


def softmax_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: Optional[jax.Array] = None
) -> jax.Array:
  """Weighted mean cross-entropy of `[B, C]` logits and soft targets; zero `weights` drop rows."""
  logits = jnp.asarray(logits, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  if logits.shape != targets.shape:
    raise ValueError(f"logits {logits.shape} and targets {targets.shape} must have the same shape")
  per_example = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  if weights is None:
    weights = jnp.ones(per_example.shape, jnp.float32)
  else:
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != per_example.shape:
      raise ValueError(f"weights {weights.shape} must have shape {per_example.shape}")
  return jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), 1e-8)


def mixup_with_lambda(
    rng: jax.Array, inputs: jax.Array, targets: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Batch mixup: `(lam * x + (1 - lam) * flip(x), same for targets, lam)`.

  One float32 `lam ~ Beta(alpha, alpha)` per batch; example `i` is blended with `B - 1 - i`
  in float32, and the results keep their dtypes. `targets` are float `[B, C]`, not class ids.
  """
  if not jnp.issubdtype(jnp.result_type(targets), jnp.floating):
    raise TypeError("mixup targets must be floating point one-hot/soft labels, not class ids")
  if not jnp.issubdtype(jnp.result_type(inputs), jnp.floating):
    raise TypeError("mixup inputs must be floating point")
  if alpha <= 0.0:
    return inputs, targets, jnp.ones((), jnp.float32)
  lam = jax.random.beta(rng, alpha, alpha, dtype=jnp.float32)

  def blend(x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)  # bfloat16 would lose the small (1 - lam) term
    return (lam * x32 + (1.0 - lam) * jnp.flip(x32, axis=0)).astype(x.dtype)

  return blend(inputs), blend(targets), lam


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                    temperature: float = 1.0) -> jax.Array:
  """KL(teacher || student) of the `softmax(logits / tau)` distributions, batch mean, times tau^2.

  The tau^2 factor (Hinton et al.) keeps the student's gradient magnitude independent of tau.
  """
  s = jnp.asarray(student_logits, jnp.float32) / temperature
  t = jax.lax.stop_gradient(jnp.asarray(teacher_logits, jnp.float32)) / temperature
  if s.shape != t.shape:
    raise ValueError(f"student logits {s.shape} and teacher logits {t.shape} differ in shape")
  log_pt = jax.nn.log_softmax(t, axis=-1)
  log_ps = jax.nn.log_softmax(s, axis=-1)
  per_example = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return temperature ** 2 * jnp.mean(per_example)


def feature_mse(student_features: jax.Array, teacher_features: jax.Array) -> jax.Array:
  """Mean squared error over every element; the teacher features get no gradient."""
  s = jnp.asarray(student_features, jnp.float32)
  t = jax.lax.stop_gradient(jnp.asarray(teacher_features, jnp.float32))
  if s.shape != t.shape:
    raise ValueError(f"student features {s.shape} and teacher features {t.shape} differ in shape")
  return jnp.mean(jnp.square(s - t))


def ofa_loss(student_logits: jax.Array, teacher_logits: jax.Array, targets: jax.Array,
             eta: float = 1.1) -> jax.Array:
  """OFA-KD loss with adaptive target enhancement, batch mean (float32 scalar).

  For a one-hot target `y`: `-(1 + p_t[y])^eta * log p_s[y] - sum_{c != y} p_t[c] log p_s[c]`
  (the paper's form; at eta = 1 the cross-entropy against `onehot(y) + p_t`; the public OFA-KD
  code instead weights classes by `(p_t + onehot)^eta - onehot`). Soft `targets` interpolate:
  `w_c = t_c * (1 + p_t[c])^eta + (1 - t_c) * p_t[c]`. The teacher gets no gradient.
  """
  s = jnp.asarray(student_logits, jnp.float32)
  p_t = jax.nn.softmax(jax.lax.stop_gradient(jnp.asarray(teacher_logits, jnp.float32)), axis=-1)
  targets = jnp.asarray(targets, jnp.float32)
  if not s.shape == p_t.shape == targets.shape:
    raise ValueError(f"student {s.shape}, teacher {p_t.shape} and targets {targets.shape} "
                     "must have the same shape")
  weights = targets * (1.0 + p_t) ** eta + (1.0 - targets) * p_t
  return jnp.mean(-jnp.sum(weights * jax.nn.log_softmax(s, axis=-1), axis=-1))
