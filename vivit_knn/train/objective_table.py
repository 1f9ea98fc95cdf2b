"""The training objectives by name, and the one `config.loss.objective` selects.

`OBJECTIVES` maps each name to a factory `(config, num_train_examples) -> Objective` that
refuses a config it cannot train, naming the field. (The table is not beside the base class
in `objectives` because the plug-ins import that.)
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import ml_collections

from vivit_knn import keys
from vivit_knn.train.distill import DistillObjective
from vivit_knn.train.multihead import VerbNounObjective
from vivit_knn.train.objectives import Objective

Factory = Callable[[ml_collections.ConfigDict, Optional[int]], Objective]
FIELD = "loss.objective"


def _distill_method(config: ml_collections.ConfigDict) -> str:
  distill = config.get("distill")
  return distill.method if distill is not None else ""


def two_heads(config: ml_collections.ConfigDict) -> bool:
  """Whether the model is a two-head (verb, noun) CAST, scoring actions `verb * N + noun`."""
  model = config.model
  return model.name == "cast" and model.cast.num_verbs > 0


def _verb_noun(config: ml_collections.ConfigDict,
               num_train_examples: Optional[int]) -> Objective:
  del num_train_examples
  if not two_heads(config):
    raise ValueError(
        f"{FIELD}='verb_noun' needs a two-head model: model.name='cast' with "
        f"model.cast.num_verbs > 0 (got model.name={config.model.name!r})")
  cast = config.model.cast
  return VerbNounObjective(cast.num_verbs, cast.num_nouns)


def _distill(config: ml_collections.ConfigDict,
             num_train_examples: Optional[int]) -> Objective:
  if not _distill_method(config):
    raise ValueError(f"{FIELD}='distill' needs distill.method ('fad' or 'fpld'), which is unset")
  return DistillObjective(config, num_train_examples)


OBJECTIVES: Dict[str, Factory] = {
    "classification": lambda config, num_train_examples: Objective(),
    "verb_noun": _verb_noun,
    "distill": _distill,
}


def objective_name(config: ml_collections.ConfigDict) -> str:
  """The `OBJECTIVES` key `config` trains with: `loss.objective`, or the automatic choice.

  '' chooses 'distill' when `distill.method` is set, else 'verb_noun' for a two-head CAST,
  else 'classification'.
  """
  name = config.loss.get("objective", "") or ""
  method = _distill_method(config)
  if not name:
    if method:
      return "distill"
    return "verb_noun" if two_heads(config) else "classification"
  if name not in OBJECTIVES:
    raise ValueError(f"{FIELD}={name!r} is unknown{keys.did_you_mean(name, OBJECTIVES)}; "
                     f"choose one of {sorted(OBJECTIVES)} (or '' to choose from the model)")
  if method and name != "distill":
    raise ValueError(f"{FIELD}={name!r} would leave distill.method={method!r} unused; set "
                     f"{FIELD}='distill' (or '') or distill.method=''")
  return name


def check_objective(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field, before anything is built, if the objective cannot train."""
  # The factories check the config and build nothing heavy (teachers load later).
  OBJECTIVES[objective_name(config)](config, None)


def build_objective(config: ml_collections.ConfigDict,
                    num_train_examples: Optional[int] = None) -> Objective:
  """The objective `config` selects; `num_train_examples` sizes an epoch-based stage 1."""
  return OBJECTIVES[objective_name(config)](config, num_train_examples)
