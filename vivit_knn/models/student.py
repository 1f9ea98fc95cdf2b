"""The distillation student: a ViT-S video transformer over tubelet tokens.

ViT-S defaults (12 layers, 6 heads, width 384, MLP 1536), ViViT model 1's layout
and names. Two-stage distillation options: `mhca_layers` (the first layers use MHCA,
whose heads start as local conv-like kernels; TSD-fad), `branch_heads` (classifiers
`branch_i` on the CLS at the ends of that many equal parts of the encoder, for the
OFA loss; TSD-fpld) and `aligner_features` (a `FeatureAligner` onto a CNN teacher's
layer4 map; TSD-fad). Branches and aligner run only in training and at init;
`export_params` drops them.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vivit_knn.models import resnet
from vivit_knn.models.aligner import FeatureAligner
from vivit_knn.models.encoder import AddPositionEmbedding, EncoderBlock, drop_path, mlp_residual
from vivit_knn.models.family import (KeyCounts, ModelFamily, attention_spec, require,
                                     video_transformer_kwargs)
from vivit_knn.models.init_rules import InitRules
from vivit_knn.models.mhca import mhca_attention
from vivit_knn.models.video_transformer import (BlockFields, StackFields, VideoTransformer,
                                                maybe_remat)
from vivit_knn.models.vivit import tubelet_embedding

Dtype = Any
TRAINING_ONLY_PREFIXES = ("branch_", "aligner")


class MHCABlock(BlockFields):
  """Pre-LN block like `EncoderBlock`, with MHCA (adds `RelativePosition_0`) as its attention."""

  locality_strength: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool, grid: Tuple[int, int],
               num_frames: int) -> jax.Array:
    """Applies the block to `[B, 1 + T*h*w, D]` tokens (CLS first)."""
    y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
    y = mhca_attention(y, num_heads=self.num_heads, grid=grid, num_frames=num_frames,
                       attention=self.attention, locality_strength=self.locality_strength,
                       dropout_rate=self.attention_dropout_rate, deterministic=deterministic,
                       dtype=self.dtype)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    x = x + drop_path(self, y, self.droppath_rate, deterministic)
    return mlp_residual(self, x, deterministic)


class StudentEncoder(StackFields):
  """Position embedding, blocks (MHCA first), LayerNorm: `(tokens, [tokens after each of taps])`."""

  mhca_layers: int = 0
  locality_strength: float = 1.0
  taps: Tuple[int, ...] = ()

  @nn.compact
  def __call__(self, x: jax.Array, *, grid: Tuple[int, int], num_frames: int, train: bool):
    """Encodes `[B, 1 + T*h*w, D]` tokens."""
    x = AddPositionEmbedding(name="posembed_input")(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    tapped = []
    for layer in range(self.num_layers):
      common = self.block_fields(layer)
      if layer < self.mhca_layers:
        cls = maybe_remat(MHCABlock, self.remat, static_argnums=(2, 3, 4))
        x = cls(locality_strength=self.locality_strength, **common)(
            x, not train, tuple(grid), num_frames)
      else:
        x = maybe_remat(EncoderBlock, self.remat)(**common)(x, not train)
      if layer + 1 in self.taps:
        tapped.append(x)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x), tapped


class BranchHead(nn.Module):
  """LayerNorm, then a zero-initialised linear classifier on the CLS token."""

  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    """`[B, N, D]` tokens -> `[B, num_classes]` float32 logits."""
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(tokens[:, 0])
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=jnp.float32,
                    name="head")(x)


def branch_layers(num_layers: int, branch_heads: int) -> Tuple[int, ...]:
  """1-based layers after which the branches sit: the ends of `branch_heads` equal parts."""
  return tuple(num_layers // branch_heads * (i + 1) for i in range(branch_heads))


class VideoStudent(VideoTransformer):
  """ViT-S video student returning `(logits, intermediates)`.

  `intermediates`: `tubelets`, `encoded`, `pre_logits`, `patch_tokens` (`[B, t, h, w, D]`);
  in training `branch_logits` (`[branches, B, classes]`), `aligned` (ResNet layer4 size).
  """

  hidden_size: int = 384
  num_heads: int = 6
  mlp_dim: int = 1536
  mhca_layers: int = 0
  locality_strength: float = 1.0
  branch_heads: int = 0
  aligner_features: int = 0
  aligner_kernel: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Classifies clips `[B, T, H, W, C]`; returns `(logits [B, classes], intermediates)`."""
    taps = branch_layers(self.num_layers, self.branch_heads)
    frame_hw = x.shape[2:4]
    x = tubelet_embedding(self)(x)
    out: Dict[str, Any] = {"tubelets": x}
    b, t, h, w, d = x.shape
    tokens = self.prepend_cls(x.reshape(b, t * h * w, d))
    encoded, tapped = StudentEncoder(
        mhca_layers=self.mhca_layers, locality_strength=self.locality_strength, taps=taps,
        name="Transformer", **self.stack_fields())(tokens, grid=(h, w), num_frames=t, train=train)
    out.update(encoded=encoded, pre_logits=encoded[:, 0],
               patch_tokens=encoded[:, 1:].reshape(b, t, h, w, d))
    training_heads = train or self.is_initializing()
    if training_heads and taps:
      out["branch_logits"] = jnp.stack([
          BranchHead(self.num_classes, self.dtype, name=f"branch_{i}")(z)
          for i, z in enumerate(tapped)])
    if training_heads and self.aligner_features:
      size = tuple(resnet.feature_size(s) for s in frame_hw)
      out["aligned"] = FeatureAligner(self.aligner_features, self.aligner_kernel, self.dtype,
                                      name="aligner")(out["patch_tokens"], size)
    return self.classify(out["pre_logits"]), out


def export_params(params: Dict[str, Any]) -> Dict[str, Any]:
  """The student's parameters without the training-only branch heads and aligner."""
  return {k: v for k, v in params.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}


def _defaults() -> Dict[str, Any]:
  """The student's own `config.model` key (`branch_heads`, `aligner_features`: 0 = none)."""
  return {"student": {"mhca_layers": 0, "locality_strength": 1.0, "branch_heads": 0,
                      "aligner_features": 0, "aligner_kernel": 1}}


def _check(cfg: ml_collections.ConfigDict, input_shape: Sequence[int], field: str) -> None:
  """Checks the CLS classifier and the `student` block against `num_layers`."""
  del input_shape
  st = cfg.student
  require(cfg.classifier == "token", f"{field}.classifier",
          f"must be 'token' for the student (its branches read the CLS), got {cfg.classifier!r}")
  require(0 <= st.mhca_layers <= cfg.num_layers, f"{field}.student.mhca_layers",
          f"must be in [0, num_layers={cfg.num_layers}], got {st.mhca_layers}")
  require(st.branch_heads >= 0 and (st.branch_heads == 0 or cfg.num_layers % st.branch_heads == 0),
          f"{field}.student.branch_heads",
          f"must be 0 or divide num_layers={cfg.num_layers}, got {st.branch_heads}")
  require(st.aligner_features >= 0, f"{field}.student.aligner_features",
          f"must be >= 0, got {st.aligner_features}")
  require(st.aligner_kernel >= 1, f"{field}.student.aligner_kernel",
          f"must be >= 1, got {st.aligner_kernel}")


def _build(cfg: ml_collections.ConfigDict, num_classes: int) -> VideoStudent:
  return VideoStudent(**{key: cfg.student[key] for key in _defaults()["student"]},
                      **video_transformer_kwargs(cfg, num_classes, FAMILY.mlp_activation))


def _key_counts(cfg: ml_collections.ConfigDict, t: int, s: int) -> KeyCounts:
  return {"model.attention": (1 + t * s, attention_spec(cfg.attention))}


# The distillation heads, the aligner and MHCA's relative-position terms are new.
INIT_RULES = InitRules(new_modules=("aligner", r"branch_\d+"),
                       new_block_modules=("RelativePosition_0",))

FAMILY = ModelFamily(
    name="student", build=_build, defaults=_defaults, check=_check, key_counts=_key_counts,
    mlp_activation="gelu_tanh",  # scenic's, as ViViT
    stem_names=frozenset({"embedding", "cls", "posembed_input"}),
    init_rules=INIT_RULES)
