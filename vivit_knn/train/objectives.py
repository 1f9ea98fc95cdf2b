"""Training objectives: the loss a train step minimises, as a plug-in of the one trainer.

An objective sees the student's forward pass (logits and intermediates) and may
run frozen networks of its own (a distillation teacher). Frozen parameters live
outside the train state: they are neither updated nor checkpointed with it.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import ml_collections

from vivit_knn.train import losses

Terms = Dict[str, jax.Array]


class Objective:
  """Base objective: softmax cross-entropy on (smoothed, mixed) one-hot targets.

  Subclasses override `init_frozen` to load frozen networks and `__call__` to
  add loss terms. Every term in the returned dict is logged separately.
  An objective may change with training progress (distillation stages):
  `phase(step)` names the phase, and the trainer re-initialises the frozen
  networks and recompiles the step when it changes. A phase is a pure function
  of the step, so a resumed run lands in the right one.
  """

  def phase(self, step: int) -> str:
    """Name of the phase that trains step `step` (0-based)."""
    del step
    return "main"

  def init_frozen(self, exp, phase: str) -> Any:
    """Frozen parameters the objective needs in `phase` (none for plain classification)."""
    del exp, phase
    return {}

  def frozen_shardings(self, exp, frozen: Any) -> Any:
    """Shardings of `frozen` on the experiment's mesh (replicated by default)."""
    from vivit_knn.train import sharding
    return jax.tree.map(lambda _: sharding.replicated(exp.mesh), frozen)

  def __call__(self, frozen: Any, *, phase: str, inputs: jax.Array, targets: jax.Array,
               logits: jax.Array, intermediates: Dict[str, Any], step: jax.Array,
               rng: jax.Array) -> Tuple[jax.Array, Terms]:
    """Returns `(loss, terms)` for one batch; `targets` are float `[B, C]`."""
    del frozen, phase, inputs, intermediates, step, rng
    ce = losses.softmax_cross_entropy(logits, targets)
    return ce, {"ce": ce}


def build_objective(config: ml_collections.ConfigDict,
                    num_train_examples: int | None = None) -> Objective:
  """The objective for `config` (classification unless a plug-in is configured).

  `distill.method` 'fad' / 'fpld' selects two-stage distillation
  (`vivit_knn.train.distill`); `num_train_examples` sizes its epoch-based stage 1
  (looked up from the dataset when not given). A two-head CAST
  (`model.cast.num_verbs` > 0, EPIC-Kitchens) trains with the verb + noun
  objective (`vivit_knn.train.multihead`), which logs both terms.
  """
  if config.get("distill") is not None and config.distill.method:
    from vivit_knn.train.distill import DistillObjective  # distill imports this module
    return DistillObjective(config, num_train_examples)
  model = config.model
  if model.name == "cast" and model.cast.num_verbs > 0:
    from vivit_knn.train.multihead import VerbNounObjective  # multihead imports this module
    return VerbNounObjective(model.cast.num_verbs, model.cast.num_nouns)
  return Objective()
