"""Builds a model from `config.model` and reports the attention token counts it implies.

`config.model.name` picks the family: 'vivit' (models 1-4), 'timesformer', 'xvit' or
'student' (the ViT-S video student of two-stage distillation) or 'cast' (two frozen
experts joined by cross-attention, `model.cast`).

`model.mlp_activation` left empty takes the family's source: the erf GELU for
TimeSformer and X-ViT (PyTorch code, so their released weights reproduce), flax's
tanh GELU for ViViT and the student (scenic). CAST's experts fix their own
(QuickGELU for CLIP, erf for VideoMAE), so the key must stay empty there.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from vivit_knn.models import cast, student, timesformer, xvit
from vivit_knn.models.attention import ATTENTION_KINDS, resolve_knn_k
from vivit_knn.models.encoder import MLP_ACTIVATIONS, AttentionSpec
from vivit_knn.models.vivit import ViViT

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MODEL_NAMES = ("vivit", "timesformer", "xvit", "student", "cast")
# `model.attention_type` when left empty.
DEFAULT_ATTENTION_TYPE = {"timesformer": "divided_space_time", "xvit": "space_time_mixing"}
ATTENTION_TYPES = {"timesformer": timesformer.ATTENTION_TYPES, "xvit": xvit.ATTENTION_TYPES}
# `model.mlp_activation` when left empty: the activation of each family's original code.
DEFAULT_MLP_ACTIVATION = {"vivit": "gelu_tanh", "student": "gelu_tanh",
                          "timesformer": "gelu_exact", "xvit": "gelu_exact"}


def attention_type(cfg: ml_collections.ConfigDict) -> str:
  """`model.attention_type`, or the family's default when empty (TimeSformer/X-ViT only)."""
  return cfg.attention_type or DEFAULT_ATTENTION_TYPE[cfg.name]


def mlp_activation(cfg: ml_collections.ConfigDict) -> str:
  """`model.mlp_activation`, or the family's default when empty (a key of `MLP_ACTIVATIONS`).

  CAST has no single MLP activation (its experts fix their own): returns '' for it,
  and raises ValueError naming `model.mlp_activation` if one is set.
  """
  name = cfg.mlp_activation
  if name and name not in MLP_ACTIVATIONS:
    raise ValueError(f"model.mlp_activation must be one of {tuple(MLP_ACTIVATIONS)} or empty "
                     f"(the family's default), got {name!r}")
  if cfg.name == "cast":
    if name:
      raise ValueError(f"model.mlp_activation={name!r} cannot take effect for model.name="
                       "'cast': its experts fix their own activations; leave it empty")
    return ""
  return name or DEFAULT_MLP_ACTIVATION[cfg.name]


def attention_spec(cfg: ml_collections.ConfigDict, field: str) -> AttentionSpec:
  """Turns an `{kind, knn_k}` config block into an AttentionSpec.

  `knn_k` at most 1 is a fraction of the key count; a larger whole number is a count.
  """
  if cfg.kind not in ATTENTION_KINDS:
    raise ValueError(f"{field}.kind must be one of {ATTENTION_KINDS}, got {cfg.kind!r}")
  k = cfg.knn_k
  if isinstance(k, float) and k > 1 and float(k).is_integer():
    k = int(k)
  return AttentionSpec(kind=cfg.kind, knn_k=k if cfg.kind == "knn" else None)


def _common(cfg: ml_collections.ConfigDict, num_classes: int) -> dict:
  return dict(
      num_classes=num_classes,
      hidden_size=cfg.hidden_size,
      patch_size=tuple(cfg.patch_size),
      num_heads=cfg.num_heads,
      mlp_dim=cfg.mlp_dim,
      num_layers=cfg.num_layers,
      attention=attention_spec(cfg.attention, "model.attention"),
      dropout_rate=cfg.dropout_rate,
      attention_dropout_rate=cfg.attention_dropout_rate,
      stochastic_depth=cfg.stochastic_depth,
      kernel_init_method=cfg.kernel_init_method or None,
      remat=cfg.remat,
      dtype=DTYPES[cfg.dtype],
      mlp_activation=MLP_ACTIVATIONS[mlp_activation(cfg)],
  )


def build_model(cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Returns the Flax module described by `config.model` for `num_classes` outputs."""
  if cfg.name not in MODEL_NAMES:
    raise ValueError(f"model.name must be one of {MODEL_NAMES}, got {cfg.name!r}")
  if cfg.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
  mlp_activation(cfg)  # checks the name (and that CAST leaves it empty)
  if cfg.xvit_segment_frames and cfg.name != "xvit":
    raise ValueError(f"model.xvit_segment_frames applies to model.name='xvit' only, "
                     f"got {cfg.name!r}")
  if cfg.name == "timesformer":
    return timesformer.TimeSformer(
        attention_type=attention_type(cfg),
        temporal_attention=attention_spec(cfg.temporal_attention, "model.temporal_attention"),
        time_embed_init_std=cfg.time_embed_init_std,
        temporal_fc_zero_init=cfg.temporal_fc_zero_init,
        **_common(cfg, num_classes))
  if cfg.name == "cast":
    return cast.CAST(
        num_classes=num_classes, hidden_size=cfg.hidden_size, num_heads=cfg.num_heads,
        mlp_dim=cfg.mlp_dim, num_layers=cfg.num_layers, patch_size=tuple(cfg.patch_size),
        cross_dim=cfg.cast.cross_dim, adapter_dim=cfg.cast.adapter_dim,
        mlp_adapter_scale=cfg.cast.mlp_adapter_scale, num_verbs=cfg.cast.num_verbs,
        num_nouns=cfg.cast.num_nouns, dropout_rate=cfg.dropout_rate,
        attention_dropout_rate=cfg.attention_dropout_rate,
        stochastic_depth=cfg.stochastic_depth, remat=cfg.remat, dtype=DTYPES[cfg.dtype])
  if cfg.name == "student":
    return student.VideoStudent(
        mhca_layers=cfg.student.mhca_layers,
        locality_strength=cfg.student.locality_strength,
        branch_heads=cfg.student.branch_heads,
        aligner_features=cfg.student.aligner_features,
        aligner_kernel=cfg.student.aligner_kernel,
        **_common(cfg, num_classes))
  if cfg.name == "xvit":
    return xvit.XViT(
        attention_type=attention_type(cfg),
        shift_div=cfg.xvit_div,
        segment_frames=cfg.xvit_segment_frames,
        num_summary_tokens=cfg.num_summary_tokens,
        head_layers=cfg.head_layers,
        temporal_attention=attention_spec(cfg.temporal_attention, "model.temporal_attention"),
        time_embed_init_std=cfg.time_embed_init_std,
        **_common(cfg, num_classes))
  return ViViT(
      model_type=cfg.model_type,
      spatial_layers=cfg.spatial_transformer.num_layers,
      temporal_layers=cfg.temporal_transformer.num_layers,
      spatial_attention=attention_spec(cfg.spatial_transformer.attention,
                                       "model.spatial_transformer.attention"),
      temporal_attention=attention_spec(cfg.temporal_transformer.attention,
                                        "model.temporal_transformer.attention"),
      classifier=cfg.classifier,
      **_common(cfg, num_classes))


def attention_key_counts(cfg: ml_collections.ConfigDict,
                         input_shape: Sequence[int]) -> Dict[str, Tuple[int, AttentionSpec]]:
  """Maps each attention config field to (number of keys it attends over, its spec).

  `input_shape` is one clip's `(T, H, W, C)`. Used to check `knn_k` before compiling.
  """
  t_in, h_in, w_in, _ = input_shape
  ph, pw, pt = cfg.patch_size
  t, s = t_in // pt, (h_in // ph) * (w_in // pw)
  if cfg.name in ATTENTION_TYPES:
    return _spacetime_key_counts(cfg, t, s)
  if cfg.name == "cast":  # dense attention only (checked in config.check_model)
    return {}
  if cfg.name == "student":  # one joint space-time encoder with a CLS
    return {"model.attention": (1 + t * s, attention_spec(cfg.attention, "model.attention"))}
  cls = 1 if cfg.classifier == "token" else 0
  if cfg.model_type == "factorized_encoder":
    return {
        "model.spatial_transformer.attention": (
            s + cls, attention_spec(cfg.spatial_transformer.attention,
                                    "model.spatial_transformer.attention")),
        "model.temporal_transformer.attention": (
            t + cls, attention_spec(cfg.temporal_transformer.attention,
                                    "model.temporal_transformer.attention")),
    }
  spec = attention_spec(cfg.attention, "model.attention")
  if cfg.model_type == "spacetime":
    return {"model.attention": (t * s + cls, spec)}
  # Models 3 and 4 attend along time and along space separately; k must fit both.
  return {"model.attention": (min(t, s), spec)}


def _spacetime_key_counts(cfg: ml_collections.ConfigDict, t: int,
                          s: int) -> Dict[str, Tuple[int, AttentionSpec]]:
  """Key counts of TimeSformer / X-ViT attentions for t frames of s patches (plus a CLS)."""
  spec = attention_spec(cfg.attention, "model.attention")
  temporal = attention_spec(cfg.temporal_attention, "model.temporal_attention")
  kind = attention_type(cfg)
  if cfg.name == "timesformer":
    if kind == "joint_space_time":
      return {"model.attention": (1 + t * s, spec)}
    counts = {"model.attention": (1 + s, spec)}
    if kind == "divided_space_time":
      counts["model.temporal_attention"] = (t, temporal)
    return counts
  # X-ViT: within-frame keys (+ every frame's summary tokens); the head sees CLS + t frames.
  return {"model.attention": (1 + s + t * cfg.num_summary_tokens, spec),
          "model.temporal_attention": (1 + t, temporal)}


def check_knn_k(cfg: ml_collections.ConfigDict, input_shape: Sequence[int]) -> None:
  """Raises ValueError naming the field when a k-NN `knn_k` does not fit its token count."""
  for field, (num_keys, spec) in attention_key_counts(cfg, input_shape).items():
    if spec.kind != "knn":
      continue
    try:
      resolve_knn_k(spec.knn_k, num_keys)
    except ValueError as err:
      raise ValueError(f"{field}.knn_k={spec.knn_k!r} does not fit the {num_keys} tokens "
                       f"this attention sees: {err}") from None
