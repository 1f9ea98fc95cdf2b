"""Verb + noun (EPIC-Kitchens) classification on top of the single-label trainer.

A dataset gives one action label per clip, `action = verb * num_nouns + noun`,
over `num_verbs * num_nouns` classes. A two-head model returns as its logits the
joint log-probabilities `log p(verb) + log p(noun)` (`cast.joint_action_log_probs`)
and the two heads' logits as `verb_logits` / `noun_logits` intermediates. Then:

* the standard softmax cross-entropy on the joint logits equals the verb loss plus
  the noun loss, also for smoothed or mixed targets (their marginals are the
  per-head targets; smoothing over actions is smoothing over verbs and over nouns);
* the standard top-1 of the joint logits is the action accuracy (both correct),
  since their argmax is the pair of per-head argmaxes.

`VerbNounObjective` computes the same loss from the two heads and logs the verb and
noun terms separately; `verb_noun_accuracy` gives the three accuracies.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from vivit_knn.train import losses
from vivit_knn.train.objectives import Objective, Terms


def action_labels(verb: jax.Array, noun: jax.Array, num_nouns: int) -> jax.Array:
  """The action class of (verb, noun) pairs: `verb * num_nouns + noun`."""
  return verb * num_nouns + noun


def split_action_labels(action: jax.Array, num_nouns: int) -> Tuple[jax.Array, jax.Array]:
  """Inverse of `action_labels`: returns `(verb, noun)`."""
  return action // num_nouns, action % num_nouns


def marginal_targets(targets: jax.Array, num_verbs: int,
                     num_nouns: int) -> Tuple[jax.Array, jax.Array]:
  """Action targets `[B, V * N]` -> their verb `[B, V]` and noun `[B, N]` marginals."""
  joint = targets.reshape(targets.shape[0], num_verbs, num_nouns)
  return jnp.sum(joint, axis=2), jnp.sum(joint, axis=1)


def verb_noun_accuracy(verb_logits: jax.Array, noun_logits: jax.Array, action: jax.Array,
                       num_nouns: int) -> Dict[str, jax.Array]:
  """Per-example 0/1 float32 `verb_top1`, `noun_top1` and `action_top1` (both correct)."""
  verb, noun = split_action_labels(action, num_nouns)
  verb_ok = jnp.argmax(verb_logits, axis=-1) == verb
  noun_ok = jnp.argmax(noun_logits, axis=-1) == noun
  return {"verb_top1": verb_ok.astype(jnp.float32), "noun_top1": noun_ok.astype(jnp.float32),
          "action_top1": (verb_ok & noun_ok).astype(jnp.float32)}


class VerbNounObjective(Objective):
  """Verb cross-entropy + noun cross-entropy from the model's two heads, logged separately."""

  def __init__(self, num_verbs: int, num_nouns: int):
    """Heads of `num_verbs` and `num_nouns` classes; targets span their product."""
    self.num_verbs, self.num_nouns = int(num_verbs), int(num_nouns)

  def __call__(self, frozen: Any, *, phase: str, inputs: jax.Array, targets: jax.Array,
               logits: jax.Array, intermediates: Dict[str, Any], step: jax.Array,
               rng: jax.Array) -> Tuple[jax.Array, Terms]:
    """Returns `(verb_ce + noun_ce, {'verb_ce', 'noun_ce'})`."""
    del frozen, phase, inputs, logits, step, rng
    verb_t, noun_t = marginal_targets(targets, self.num_verbs, self.num_nouns)
    verb_ce = losses.softmax_cross_entropy(intermediates["verb_logits"], verb_t)
    noun_ce = losses.softmax_cross_entropy(intermediates["noun_logits"], noun_t)
    return verb_ce + noun_ce, {"verb_ce": verb_ce, "noun_ce": noun_ce}
