"""What one model family is (`ModelFamily`), and the config helpers the family modules share."""

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
__all__ = ["COMMON_KEYS", "DTYPES", "InactiveKeys", "ModelFamily", "attention_spec",
           "check_spacetime_keys", "require", "video_transformer_kwargs"]

ParamAxes = Tuple[Tuple[str, Tuple[Optional[str], ...]], ...]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Common `config.model` keys that the modules take as they are.
COMMON_KEYS = ("hidden_size", "num_heads", "mlp_dim", "num_layers", "dropout_rate",
               "attention_dropout_rate", "stochastic_depth", "remat")


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One model family: all the rest of the project knows about it.

  Attributes:
    build: `(cfg, num_classes) -> module`, from a checked config.
    defaults: `() -> keys` it adds to `config.model` (shared keys: `config.model_config`).
    check: `(cfg, input_shape, field)`: its checks (errors name `field`), run before compiling.
    key_counts: `(cfg, t, s) -> {attention field: (keys it sees, spec)}` for `t` frame
      tokens of `s` patches.
    inactive_keys: `(cfg, field) -> InactiveKeys` this configuration never reads (set
      away from their defaults, they are errors: `vivit_knn.config.check_model`).
    mlp_activation: what an empty `model.mlp_activation` means (None: the modules fix
      their own, and the key cannot take effect).
    stem_names: stem parameter names (layer 0 for layer-wise lr decay).
    init_rules: how its parameters start from an image ViT (`models.init_rules`).
  """

  name: str
  build: Callable[[ConfigDict, int], nn.Module]
  defaults: Callable[[], Dict[str, Any]] = dict
  check: Callable[[ConfigDict, Sequence[int], str], None] = lambda cfg, shape, field: None
  key_counts: Callable[[ConfigDict, int, int], KeyCounts] = lambda cfg, t, s: {}
  inactive_keys: Callable[[ConfigDict, str], InactiveKeys] = lambda cfg, field: {}
  mlp_activation: Optional[str] = "gelu_tanh"
  exclusive_keys: Tuple[str, ...] = ()
  stem_names: FrozenSet[str] = frozenset()
  init_rules: InitRules = InitRules()
  param_axes: ParamAxes = ()


def video_transformer_kwargs(cfg: ConfigDict, num_classes: int,
                             default_activation: str) -> Dict[str, Any]:
  """The `VideoTransformer` fields from the common keys of `config.model`."""
  return dict(
      {key: cfg[key] for key in COMMON_KEYS}, num_classes=num_classes,
      patch_size=tuple(cfg.patch_size), attention=attention_spec(cfg.attention),
      kernel_init_method=cfg.kernel_init_method or None, dtype=DTYPES[cfg.dtype],
      mlp_activation=MLP_ACTIVATIONS[cfg.mlp_activation or default_activation])


def check_spacetime_keys(cfg: ConfigDict, field: str, attention_types: Tuple[str, ...],
                         default_attention_type: str) -> None:
  """Checks TimeSformer's and X-ViT's `attention_type`, `classifier` and `time_embed_init_std`."""
  require(cfg.attention_type in ("",) + attention_types, f"{field}.attention_type",
          f"must be one of {attention_types} (or empty for {default_attention_type!r}) for "
          f"{cfg.name}, got {cfg.attention_type!r}")
  require(cfg.classifier == "token", f"{field}.classifier",
          f"must be 'token' for {cfg.name} (it classifies from its CLS), got {cfg.classifier!r}")
  require(cfg.time_embed_init_std >= 0.0, f"{field}.time_embed_init_std",
          f"must be >= 0 (0 = zeros), got {cfg.time_embed_init_std}")
