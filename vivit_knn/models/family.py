"""What one model family is: `ModelFamily`, and the config helpers the family modules share.

Each family module (`vivit`, `timesformer`, `xvit`, `student`, `cast`) exports one
`FAMILY`; `models.registry` lists them. A family holds everything the rest of
the project needs to know about it:

* `defaults()`: the keys it adds to the flat `config.model` block, with their
  defaults (keys several families read live in the common block of
  `vivit_knn.config.model_config`);
* `check(cfg, input_shape, field)`: its shape and option checks, run once before
  compiling; errors name the field;
* `inactive_keys(cfg, field)`: keys of `config.model` this configuration never
  reads, each with why and the keys it reads instead (set away from their
  defaults, they are errors: see `vivit_knn.config.check_model`);
* `build(cfg, num_classes)`: the Flax module, from a checked config;
* `key_counts(cfg, t, s)`: for each attention config field, the number of keys
  that attention sees (for `t` frame tokens of `s` patches) and its spec, so a
  kind's options (e.g. `knn_k`) are checked before compiling;
* `mlp_activation`: the MLP activation an empty `model.mlp_activation` means
  (None: the family's modules fix their own, and the key cannot take effect);
* `exclusive_keys`: keys that only this family reads;
* `stem_names`: parameter names of the stem (layer 0 for layer-wise lr decay);
* `init_rules`: how its parameters start from an image ViT (`models.init_rules`);
* `param_axes`: its own (path regex, logical axes) sharding rules, beyond the
  attention and MLP rules every family shares.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, FrozenSet, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from vivit_knn.keys import require
from vivit_knn.models.attention import AttentionSpec, attention_spec
from vivit_knn.models.encoder import MLP_ACTIVATIONS
from vivit_knn.models.init_rules import InitRules

ConfigDict = ml_collections.ConfigDict
KeyCounts = Dict[str, Tuple[int, AttentionSpec]]
# Key (relative to `config.model`) -> (why it cannot take effect, the keys read instead).
InactiveKeys = Dict[str, Tuple[str, Tuple[str, ...]]]
__all__ = ["DTYPES", "InactiveKeys", "ModelFamily", "attention_spec", "check_spacetime_keys",
           "mlp_activation_name", "require", "video_transformer_kwargs"]

ParamAxes = Tuple[Tuple[str, Tuple[Optional[str], ...]], ...]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _no_check(cfg: ConfigDict, input_shape: Sequence[int], field: str) -> None:
  del cfg, input_shape, field


def _no_key_counts(cfg: ConfigDict, t: int, s: int) -> KeyCounts:
  del cfg, t, s
  return {}


def _no_inactive_keys(cfg: ConfigDict, field: str) -> InactiveKeys:
  del cfg, field
  return {}


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One model family (see the module doc for each attribute)."""

  name: str
  build: Callable[[ConfigDict, int], nn.Module]
  defaults: Callable[[], Dict[str, Any]] = dict
  check: Callable[[ConfigDict, Sequence[int], str], None] = _no_check
  key_counts: Callable[[ConfigDict, int, int], KeyCounts] = _no_key_counts
  inactive_keys: Callable[[ConfigDict, str], InactiveKeys] = _no_inactive_keys
  mlp_activation: Optional[str] = "gelu_tanh"
  exclusive_keys: Tuple[str, ...] = ()
  stem_names: FrozenSet[str] = frozenset()
  init_rules: InitRules = InitRules()
  param_axes: ParamAxes = ()


def mlp_activation_name(cfg: ConfigDict, default: Optional[str]) -> str:
  """`model.mlp_activation`, or the family's `default` when empty (a key of `MLP_ACTIVATIONS`).

  With `default` None (the family fixes its own activations) returns ''.
  """
  return (cfg.mlp_activation or default) if default is not None else ""


def video_transformer_kwargs(cfg: ConfigDict, num_classes: int,
                             default_activation: str) -> Dict[str, Any]:
  """The `VideoTransformer` fields from the common keys of `config.model`."""
  return dict(
      num_classes=num_classes,
      hidden_size=cfg.hidden_size,
      patch_size=tuple(cfg.patch_size),
      num_heads=cfg.num_heads,
      mlp_dim=cfg.mlp_dim,
      num_layers=cfg.num_layers,
      attention=attention_spec(cfg.attention),
      dropout_rate=cfg.dropout_rate,
      attention_dropout_rate=cfg.attention_dropout_rate,
      stochastic_depth=cfg.stochastic_depth,
      kernel_init_method=cfg.kernel_init_method or None,
      remat=cfg.remat,
      dtype=DTYPES[cfg.dtype],
      mlp_activation=MLP_ACTIVATIONS[mlp_activation_name(cfg, default_activation)],
  )


def check_spacetime_keys(cfg: ConfigDict, field: str, attention_types: Tuple[str, ...],
                         default_attention_type: str) -> None:
  """Checks the keys TimeSformer and X-ViT share.

  These are `attention_type`, `classifier` and `time_embed_init_std`.
  """
  require(cfg.attention_type in ("",) + attention_types, f"{field}.attention_type",
          f"must be one of {attention_types} (or empty for {default_attention_type!r}) for "
          f"{cfg.name}, got {cfg.attention_type!r}")
  require(cfg.classifier == "token", f"{field}.classifier",
          f"must be 'token' for {cfg.name} (it classifies from its CLS), got {cfg.classifier!r}")
  require(cfg.time_embed_init_std >= 0.0, f"{field}.time_embed_init_std",
          f"must be >= 0 (0 = zeros), got {cfg.time_embed_init_std}")
