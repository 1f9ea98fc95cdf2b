"""Training objectives: the loss a train step minimises, as a plug-in of the one trainer.

The base class here is extended by the plug-ins (`multihead`, `distill`); `objective_table`
builds the configured one. An objective sees the student's forward pass and may run frozen
networks of its own (a teacher), kept outside the train state: neither updated nor saved.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax

from vivit_knn.train import losses, sharding

Terms = Dict[str, jax.Array]


class Objective:
  """Base objective: softmax cross-entropy on (smoothed, mixed) one-hot targets.

  Subclasses override `init_frozen` to load frozen networks and `__call__` to add loss terms,
  each logged. `phase(step)`, a pure function of the step, names the phase (distillation
  stages): when it changes the trainer re-initialises the frozen networks and the step.
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
    return jax.tree.map(lambda _: sharding.replicated(exp.mesh), frozen)

  def __call__(self, frozen: Any, *, phase: str, inputs: jax.Array, targets: jax.Array,
               logits: jax.Array, intermediates: Dict[str, Any], step: jax.Array,
               rng: jax.Array) -> Tuple[jax.Array, Terms]:
    """Returns `(loss, terms)` for one batch; `targets` are float `[B, C]`."""
    del frozen, phase, inputs, intermediates, step, rng
    ce = losses.softmax_cross_entropy(logits, targets)
    return ce, {"ce": ce}
