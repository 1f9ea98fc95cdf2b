"""Verb + noun (EPIC-Kitchens) classification: `VerbNounObjective`, the loss of a two-head CAST.

Labels are actions `verb * num_nouns + noun`; the model's logits are the joint log-probabilities
`log p(verb) + log p(noun)` (`cast.joint_action_log_probs`), whose cross-entropy is the verb
plus the noun loss, also for smoothed or mixed targets (their marginals are the heads' targets).
The objective computes it from the `verb_logits` / `noun_logits` intermediates and logs both.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from vivit_knn.train import losses
from vivit_knn.train.objectives import Objective, Terms


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
    joint = targets.reshape(targets.shape[0], self.num_verbs, self.num_nouns)
    verb_t, noun_t = jnp.sum(joint, axis=2), jnp.sum(joint, axis=1)  # the heads' targets
    verb_ce = losses.softmax_cross_entropy(intermediates["verb_logits"], verb_t)
    noun_ce = losses.softmax_cross_entropy(intermediates["noun_logits"], noun_t)
    return verb_ce + noun_ce, {"verb_ce": verb_ce, "noun_ce": noun_ce}
