"""The model families by `config.model.name` (`FAMILIES`), and thin functions that look them up.

A new family is its module, exporting `FAMILY` (`models.family.ModelFamily`), plus
one entry in `FAMILIES`; nothing else in the project lists families.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Sequence

import flax.linen as nn
import ml_collections

from vivit_knn.models import cast, student, timesformer, vivit, xvit
from vivit_knn.models.attention import PARAM_AXES as ATTENTION_PARAM_AXES
from vivit_knn.models.attention import check_attention_spec
from vivit_knn.models.encoder import MLP_ACTIVATIONS, MLP_PARAM_AXES
from vivit_knn.models.family import (DTYPES, InactiveKeys, KeyCounts, ModelFamily, ParamAxes,
                                     require)

FAMILIES: Dict[str, ModelFamily] = {
    spec.name: spec
    for spec in (vivit.FAMILY, timesformer.FAMILY, xvit.FAMILY, student.FAMILY, cast.FAMILY)
}
MODEL_NAMES = tuple(FAMILIES)

ConfigDict = ml_collections.ConfigDict


def family(name: str) -> ModelFamily:
  """The family called `name`; raises ValueError naming `model.name` for an unknown one."""
  if name not in FAMILIES:
    raise ValueError(f"model.name must be one of {MODEL_NAMES}, got {name!r}")
  return FAMILIES[name]


def default_config_keys() -> Dict[str, Any]:
  """Every family's own `config.model` keys with their defaults, merged; ValueError on a clash."""
  merged: Dict[str, Any] = {}
  for spec in FAMILIES.values():
    for key, value in spec.defaults().items():
      if key in merged:
        raise ValueError(f"model.{key} is declared by more than one family")
      merged[key] = value
  return merged


def build_model(cfg: ConfigDict, num_classes: int) -> nn.Module:
  """The Flax module a checked `config.model` (`vivit_knn.config.check_model`) describes."""
  return FAMILIES[cfg.name].build(cfg, num_classes)


def _check_common(cfg: ConfigDict, input_shape: Sequence[int], field: str) -> None:
  require((cfg.kernel_init_method or None) in vivit.KERNEL_INIT_METHODS,
          f"{field}.kernel_init_method",
          f"must be one of {vivit.KERNEL_INIT_METHODS[1:]} or empty, got "
          f"{cfg.kernel_init_method!r}")
  require(cfg.dtype in DTYPES, f"{field}.dtype",
          f"must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
  require(len(cfg.patch_size) == 3, f"{field}.patch_size",
          f"must be (h, w, t), got {tuple(cfg.patch_size)}")
  require(cfg.hidden_size % cfg.num_heads == 0, f"{field}.num_heads",
          f"{cfg.num_heads} heads do not divide hidden_size={cfg.hidden_size}")
  for name in ("dropout_rate", "attention_dropout_rate", "stochastic_depth"):
    require(0.0 <= cfg[name] < 1.0, f"{field}.{name}", f"must be in [0, 1), got {cfg[name]}")
  t_in, h_in, w_in, _ = input_shape
  ph, pw, pt = cfg.patch_size
  require(pt >= 1 and t_in % pt == 0, f"{field}.patch_size",
          f"num_frames={t_in} is not divisible by the tubelet time size t={pt} "
          "(dataset.num_frames)")
  require(ph >= 1 and h_in % ph == 0, f"{field}.patch_size",
          f"image height {h_in} is not divisible by the patch height {ph}")
  require(pw >= 1 and w_in % pw == 0, f"{field}.patch_size",
          f"image width {w_in} is not divisible by the patch width {pw}")
  require(cfg.mlp_activation in ("",) + tuple(MLP_ACTIVATIONS), f"{field}.mlp_activation",
          f"must be one of {tuple(MLP_ACTIVATIONS)} or empty (the family's default), got "
          f"{cfg.mlp_activation!r}")


def check(cfg: ConfigDict, input_shape: Sequence[int], field: str = "model") -> None:
  """Checks `config.model` for clips `(T, H, W, C)`: common, family and attention checks."""
  require(cfg.name in FAMILIES, f"{field}.name",
          f"must be one of {MODEL_NAMES}, got {cfg.name!r}")
  _check_common(cfg, input_shape, field)
  FAMILIES[cfg.name].check(cfg, input_shape, field)
  for attention_field, (num_keys, spec) in attention_key_counts(cfg, input_shape).items():
    check_attention_spec(spec, num_keys, attention_field)


def inactive_keys(cfg: ConfigDict, field: str = "model") -> InactiveKeys:
  """The keys of a checked `config.model` its model never reads: `{key: (why, keys read instead)}`.

  Other families' exclusive keys, `mlp_activation` where fixed, and the family's own.
  """
  spec = FAMILIES[cfg.name]
  out: InactiveKeys = {}
  for other in FAMILIES.values():
    for key in other.exclusive_keys if other.name != cfg.name else ():
      out[key] = (f"it applies to {field}.name={other.name!r} only, this model is "
                  f"{cfg.name!r}", ())
  if spec.mlp_activation is None:
    out["mlp_activation"] = (f"the experts of {field}.name={cfg.name!r} fix their own "
                             "activations", ())
  out.update(spec.inactive_keys(cfg, field))
  return out


def attention_key_counts(cfg: ConfigDict, input_shape: Sequence[int]) -> KeyCounts:
  """`{attention config field: (keys it attends over, its spec)}` for clips `(T, H, W, C)`."""
  t_in, h_in, w_in, _ = input_shape
  ph, pw, pt = cfg.patch_size
  t, s = t_in // pt, (h_in // ph) * (w_in // pw)
  return family(cfg.name).key_counts(cfg, t, s)


def stem_names() -> FrozenSet[str]:
  """Names of the stem parameters of every family (layer 0 for layer-wise lr decay)."""
  return frozenset().union(*(spec.stem_names for spec in FAMILIES.values()))


def param_axes() -> ParamAxes:
  """(path regex, logical axes by rank) sharding rules: attention, MLP, then each family's own."""
  own = tuple(rule for spec in FAMILIES.values() for rule in spec.param_axes)
  return tuple(ATTENTION_PARAM_AXES) + tuple(MLP_PARAM_AXES) + own


__all__ = ["FAMILIES", "MODEL_NAMES", "attention_key_counts", "build_model", "check",
           "default_config_keys", "family", "inactive_keys", "param_axes", "stem_names"]
