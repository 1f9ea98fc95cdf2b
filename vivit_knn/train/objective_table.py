"""The training objectives by name, and the one `config.loss.objective` selects.

`OBJECTIVES` maps each name to a factory `(config, num_train_examples) -> Objective`
that refuses a config it cannot train, naming the field:

* 'classification': softmax cross-entropy on the model's logits (any model);
* 'verb_noun': verb + noun cross-entropy from a two-head CAST
  (`model.cast.num_verbs` > 0), each term logged (`vivit_knn.train.multihead`);
* 'distill': two-stage distillation, `distill.method` 'fad' or 'fpld'
  (`vivit_knn.train.distill`).

`loss.objective=''` (the default) chooses: 'distill' when `distill.method` is
set, else 'verb_noun' for a two-head CAST, else 'classification'.

The table lives here, not beside the base class in `objectives`, because it
imports the plug-ins, which import the base class.
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


def _two_heads(config: ml_collections.ConfigDict) -> bool:
  model = config.model
  return model.name == "cast" and model.cast.num_verbs > 0


def _classification(config: ml_collections.ConfigDict,
                    num_train_examples: Optional[int]) -> Objective:
  del config, num_train_examples
  return Objective()


def _verb_noun(config: ml_collections.ConfigDict,
               num_train_examples: Optional[int]) -> Objective:
  del num_train_examples
  if not _two_heads(config):
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
    "classification": _classification,
    "verb_noun": _verb_noun,
    "distill": _distill,
}


def objective_name(config: ml_collections.ConfigDict) -> str:
  """The objective `config` trains with: `loss.objective`, or the automatic choice when empty.

  Args:
    config: the experiment config.

  Returns:
    A key of `OBJECTIVES`.

  Raises:
    ValueError: naming `loss.objective` for an unknown name (listing the choices),
      or for a name other than 'distill' while `distill.method` is set.
  """
  name = config.loss.get("objective", "") or ""
  method = _distill_method(config)
  if not name:
    if method:
      return "distill"
    return "verb_noun" if _two_heads(config) else "classification"
  if name not in OBJECTIVES:
    raise ValueError(f"{FIELD}={name!r} is unknown{keys.did_you_mean(name, OBJECTIVES)}; "
                     f"choose one of {sorted(OBJECTIVES)} (or '' to choose from the model)")
  if method and name != "distill":
    raise ValueError(f"{FIELD}={name!r} would leave distill.method={method!r} unused; set "
                     f"{FIELD}='distill' (or '') or distill.method=''")
  return name


def check_objective(config: ml_collections.ConfigDict) -> None:
  """Fails before any data or model is built when the configured objective cannot train.

  Args:
    config: the experiment config.

  Raises:
    ValueError: naming the field (see `objective_name` and the factories).
  """
  # The factories check the config and build nothing heavy (teachers load later).
  OBJECTIVES[objective_name(config)](config, None)


def build_objective(config: ml_collections.ConfigDict,
                    num_train_examples: Optional[int] = None) -> Objective:
  """The objective `config` selects (see the module doc).

  Args:
    config: the experiment config.
    num_train_examples: the train split's size, which sizes distillation's
      epoch-based stage 1 (looked up from the dataset when not given).

  Returns:
    The objective.

  Raises:
    ValueError: naming the field, for an unknown name or one that cannot apply.
  """
  return OBJECTIVES[objective_name(config)](config, num_train_examples)
