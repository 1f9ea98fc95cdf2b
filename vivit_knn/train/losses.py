"""Classification losses and mixup augmentation.

Everything here is pure ``jax.numpy``: the functions can be traced inside
``jax.jit`` and operate on sharded arrays without host round trips.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

__all__ = [
    "one_hot",
    "softmax_cross_entropy",
    "mixup",
    "mixup_with_lambda",
    "distillation_kl",
    "feature_mse",
    "ofa_loss",
]


def one_hot(labels: jax.Array, num_classes: int, *, label_smoothing: float = 0.0) -> jax.Array:
  """Encodes integer labels as (optionally smoothed) one-hot float32 targets.

  Args:
    labels: integer class ids of shape ``[B]`` (any leading shape works).
    num_classes: number of classes ``C``.
    label_smoothing: ``ls`` in ``[0, 1)``. The true class gets
      ``1 - ls + ls / C`` and every other class gets ``ls / C``, so each row
      still sums to one.

  Returns:
    float32 array of shape ``labels.shape + (C,)``.
  """
  if num_classes <= 0:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing > 0.0:
    off = label_smoothing / num_classes
    hot = hot * (1.0 - label_smoothing) + off
  return hot


def softmax_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: Optional[jax.Array] = None
) -> jax.Array:
  """Weighted mean softmax cross-entropy against soft targets.

  Computes ``sum_i w_i * CE_i / max(sum_i w_i, 1e-8)`` where
  ``CE_i = -sum_c targets[i, c] * log_softmax(logits)[i, c]``. Logits are
  upcast to float32 before the softmax so bfloat16 models get a stable loss.

  Args:
    logits: ``[B, C]`` unnormalised scores.
    targets: ``[B, C]`` target distributions (one-hot, smoothed or mixed).
    weights: optional ``[B]`` per-example weights; ``None`` means all ones.
      Zero weights drop padded examples from the mean.

  Returns:
    float32 scalar.
  """
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
  total = jnp.sum(weights * per_example)
  return total / jnp.maximum(jnp.sum(weights), 1e-8)


def mixup_with_lambda(
    rng: jax.Array, inputs: jax.Array, targets: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixup that also returns the sampled mixing coefficient.

  One ``lam ~ Beta(alpha, alpha)`` is drawn for the whole batch and each
  example ``i`` is blended with example ``B - 1 - i`` (the batch flipped along
  axis 0): ``x = lam * x + (1 - lam) * flip(x)``, and the same for targets.

  Args:
    rng: PRNG key.
    inputs: ``[B, ...]`` floating point inputs (e.g. video clips).
    targets: ``[B, C]`` float targets (one-hot or smoothed), not integer ids.
    alpha: Beta concentration, a Python float. ``alpha <= 0`` disables
      mixup and returns the inputs unchanged with ``lam = 1``.

  Returns:
    ``(mixed_inputs, mixed_targets, lam)``; ``lam`` is a float32 scalar.
    Mixed arrays keep the dtype of the corresponding argument.
  """
  if not jnp.issubdtype(jnp.result_type(targets), jnp.floating):
    raise TypeError("mixup targets must be floating point one-hot/soft labels, not class ids")
  if not jnp.issubdtype(jnp.result_type(inputs), jnp.floating):
    raise TypeError("mixup inputs must be floating point")
  if alpha <= 0.0:
    return inputs, targets, jnp.ones((), jnp.float32)
  lam = jax.random.beta(rng, alpha, alpha, dtype=jnp.float32)

  def blend(x: jax.Array) -> jax.Array:
    # Blend in float32 so bfloat16 inputs do not lose the small (1 - lam) term.
    x32 = x.astype(jnp.float32)
    mixed = lam * x32 + (1.0 - lam) * jnp.flip(x32, axis=0)
    return mixed.astype(x.dtype)

  return blend(inputs), blend(targets), lam


def mixup(
    rng: jax.Array, inputs: jax.Array, targets: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
  """Batch mixup (see :func:`mixup_with_lambda`); returns ``(inputs, targets)``."""
  mixed_inputs, mixed_targets, _ = mixup_with_lambda(rng, inputs, targets, alpha)
  return mixed_inputs, mixed_targets


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                    temperature: float = 1.0) -> jax.Array:
  """KL(teacher || student) between the temperature-softened distributions, times tau^2.

  ``tau^2 * mean_i sum_c p_t[i, c] * (log p_t[i, c] - log p_s[i, c])`` with
  ``p = softmax(logits / tau)``. The ``tau^2`` factor (Hinton et al.) keeps the
  gradient magnitude w.r.t. the student logits roughly independent of ``tau``, so
  ``alpha`` balances CE and KD the same way at any temperature. The teacher gets
  no gradient. Returns a float32 scalar.
  """
  if temperature <= 0:
    raise ValueError(f"temperature must be positive, got {temperature}")
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
  """OFA-KD loss with adaptive target enhancement, averaged over the batch.

  For a one-hot target ``y``:
  ``L = -(1 + p_t[y])^eta * log p_s[y] - sum_{c != y} p_t[c] * log p_s[c]``
  (the paper's form). At ``eta = 1`` this is the cross-entropy against the soft
  target ``onehot(y) + p_t``; ``eta > 1`` strengthens the target term more where
  the teacher is confident. (The public OFA-KD code instead weights the classes by
  ``(p_t + onehot)^eta - onehot``, which drops the plain CE term.) For smoothed or
  mixed ``targets`` the per-class weight interpolates linearly:
  ``w_c = t_c * (1 + p_t[c])^eta + (1 - t_c) * p_t[c]``.

  Args:
    student_logits: ``[B, C]`` student (branch) logits.
    teacher_logits: ``[B, C]`` teacher logits (no gradient).
    targets: ``[B, C]`` float targets (one-hot, smoothed or mixed).
    eta: the modulating exponent, ``>= 1`` in the paper (1.1 by default).

  Returns:
    float32 scalar.
  """
  s = jnp.asarray(student_logits, jnp.float32)
  p_t = jax.nn.softmax(jax.lax.stop_gradient(jnp.asarray(teacher_logits, jnp.float32)), axis=-1)
  targets = jnp.asarray(targets, jnp.float32)
  if not s.shape == p_t.shape == targets.shape:
    raise ValueError(f"student {s.shape}, teacher {p_t.shape} and targets {targets.shape} "
                     "must have the same shape")
  weights = targets * (1.0 + p_t) ** eta + (1.0 - targets) * p_t
  return jnp.mean(-jnp.sum(weights * jax.nn.log_softmax(s, axis=-1), axis=-1))
