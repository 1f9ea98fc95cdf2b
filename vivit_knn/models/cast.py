"""CAST: a frozen spatial expert (CLIP) and a frozen temporal expert (VideoMAE) joined by B-CAST.

Clips `[B, T, H, W, C]`, patches `(h, w, t)`. The temporal expert sees T' = T/t
tubelet times of P = (H/h)(W/w) tokens; the spatial expert sees the last frame of
each tubelet (as the public CAST code) as an image of 1 + P tokens, so spatial frame
i is tubelet time i. Each layer runs both experts' attention halves, the B-CAST
block `cross_block_i`, then both MLP halves (each with its adapters).

Heads: single label, `head(adapter(ln_post(mean spatial CLS)) +
adapter(fc_norm(mean temporal tokens)))` (zero adapters, so the head kernel starts
random: normal 0.02). EPIC-Kitchens (`num_verbs`, `num_nouns` > 0): `noun_head` on
the spatial and `verb_head` on the temporal features; the logits are the joint
`log p(verb) + log p(noun)`, verb-major `[B, num_verbs * num_nouns]`, so softmax
cross-entropy on actions `verb * num_nouns + noun` is the sum of the two losses.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vivit_knn.models.adapters import Adapter
from vivit_knn.models.attention import MultiHeadAttention
from vivit_knn.models.encoder import drop_path, exact_gelu
from vivit_knn.models.experts import CLIPVisionExpert, ExpertFields, VideoMAEExpert
from vivit_knn.models.family import COMMON_KEYS, DTYPES, ModelFamily, require
from vivit_knn.models.video_transformer import droppath_ramp, maybe_remat

Dtype = Any

# What the paper trains (`optimizer.trainable_patterns`), as regexes on '/'-joined paths:
# the B-CAST blocks (and their *_pos), adapters, norms, heads.
TRAINABLE_PATTERNS = (r"(^|/)cross_", r"_pos$", r"adapter", r"(^|/)ln_post/", r"(^|/)fc_norm/",
                      r"(^|/)(\w+_)?head/")

_TRUNC = nn.initializers.truncated_normal(stddev=0.02)


class BCASTBlock(nn.Module):
  """Bottleneck cross-attention in space and time between the two experts' tokens.

  Spatial tokens `s` are `[B*T', 1 + P, D]`, temporal `v` `[B, T'*P, D]`; both are
  projected to `cross_dim` and normalised. T2S (`t2s`): each spatial patch attends
  along time to the temporal tokens at its grid position (the spatial CLS only
  passes the bottleneck, as in the public code); S2T (`s2t`): each temporal token
  attends to its frame's P spatial patches. Queries and keys get learned `*_time_pos`
  / `*_space_pos` embeddings; each result goes through GELU and a zero-initialised
  up-projection added to its stream, so the block starts as the identity.
  """

  num_heads: int
  cross_dim: int = 384
  droppath_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, s: jax.Array, v: jax.Array, deterministic: bool):
    """Returns the updated `(s, v)`."""
    b, bt = v.shape[0], s.shape[0]
    t = bt // b
    p = s.shape[1] - 1
    d, c = s.shape[-1], self.cross_dim
    pos_init = nn.initializers.normal(stddev=(c // self.num_heads) ** -0.5)
    pos = lambda name, n: self.param(name, pos_init, (n, c), jnp.float32).astype(self.dtype)
    dense = lambda features, name, init=_TRUNC: nn.Dense(
        features, dtype=self.dtype, kernel_init=init, name=name)
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    attention = lambda name: MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype,
                                                kernel_init=_TRUNC, name=name)

    ns = norm("cross_s_norm")(dense(c, "cross_s_down")(s))
    nv = norm("cross_t_norm")(dense(c, "cross_t_down")(v))
    s_patches = ns[:, 1:].reshape(b, t, p, c)
    v_grid = nv.reshape(b, t, p, c)

    # T2S: sequences along time, one per (clip, grid position).
    q = jnp.swapaxes(s_patches, 1, 2) + pos("spatial_time_pos", t)
    kv = jnp.swapaxes(v_grid, 1, 2) + pos("temporal_time_pos", t)
    t2s = jnp.swapaxes(attention("t2s")(q, kv), 1, 2).reshape(bt, p, c)
    s_cross = jnp.concatenate([ns[:, :1], t2s], axis=1)

    # S2T: sequences along space, one per (clip, time step).
    q = v_grid.reshape(bt, p, c) + pos("temporal_space_pos", p)
    kv = s_patches.reshape(bt, p, c) + pos("spatial_space_pos", p)
    s2t = attention("s2t")(q, kv).reshape(b, t * p, c)

    zeros = nn.initializers.zeros
    s_up = dense(d, "cross_s_up", zeros)(exact_gelu(s_cross))
    v_up = dense(d, "cross_t_up", zeros)(exact_gelu(s2t))
    s = s + drop_path(self, s_up, self.droppath_rate, deterministic)
    v = v + drop_path(self, v_up, self.droppath_rate, deterministic)
    return s, v


class CAST(ExpertFields, kw_only=True):
  """CAST with ViT experts of equal width (its fields), returning `(logits, intermediates)`.

  `intermediates`: `{spatial,temporal}_{features,encoded}` and `pre_logits` or
  (EPIC-Kitchens) `verb_logits` / `noun_logits`.
  """

  num_classes: int
  patch_size: Sequence[int] = (16, 16, 2)
  cross_dim: int = 384
  adapter_dim: int = 192
  num_verbs: int = 0
  num_nouns: int = 0

  @property
  def multihead(self) -> bool:
    """Whether this is the two-head (verb, noun) EPIC-Kitchens model."""
    return self.num_verbs > 0 and self.num_nouns > 0

  def _experts(self, num_patches: int):
    common = {f.name: getattr(self, f.name) for f in dataclasses.fields(ExpertFields)
              if f.name not in ("parent", "name")}
    return (CLIPVisionExpert(num_patches=num_patches, patch_size=tuple(self.patch_size[:2]),
                             name="spatial", **common),
            VideoMAEExpert(patch_size=tuple(self.patch_size), name="temporal", **common))

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Classifies clips `[B, T, H, W, C]`; returns `(logits, intermediates)`."""
    if self.multihead and self.num_classes != self.num_verbs * self.num_nouns:
      raise ValueError(f"CAST with num_verbs={self.num_verbs}, num_nouns={self.num_nouns} "
                       f"predicts {self.num_verbs * self.num_nouns} actions, but the dataset "
                       f"has {self.num_classes} classes")
    b, frames, height, width, channels = x.shape
    ph, pw, pt = self.patch_size
    t, p = frames // pt, (height // ph) * (width // pw)
    spatial, temporal = self._experts(p)
    block = maybe_remat(BCASTBlock, self.remat, static_argnums=(3,))

    # One frame per tubelet, its last: spatial frame i sits inside tubelet i.
    images = x[:, pt - 1::pt].reshape(b * t, height, width, channels)
    s = spatial.embed(images)
    v = temporal.embed(x)
    for i in range(self.num_layers):
      s = spatial.block(i, s, train=train, part="attention")
      v = temporal.block(i, v, train=train, part="attention")
      rate = droppath_ramp(self.stochastic_depth, i, self.num_layers)
      s, v = block(self.num_heads, self.cross_dim, rate, self.dtype,
                   name=f"cross_block_{i}")(s, v, not train)
      s = spatial.block(i, s, train=train, part="mlp")
      v = temporal.block(i, v, train=train, part="mlp")

    s = s.reshape(b, t, p + 1, s.shape[-1])
    out: Dict[str, jax.Array] = {"spatial_encoded": s, "temporal_encoded": v,
                                 "spatial_features": spatial.pool(s),
                                 "temporal_features": temporal.pool(v)}
    dropout = nn.Dropout(self.dropout_rate)
    head = lambda n, name: nn.Dense(n, kernel_init=_TRUNC, dtype=jnp.float32, name=name)
    if self.multihead:
      noun = head(self.num_nouns, "noun_head")(
          dropout(out["spatial_features"], deterministic=not train))
      verb = head(self.num_verbs, "verb_head")(
          dropout(out["temporal_features"], deterministic=not train))
      out["noun_logits"], out["verb_logits"] = noun, verb
      return joint_action_log_probs(verb, noun), out

    adapter = lambda name: Adapter(self.adapter_dim, skip=False, dtype=self.dtype, name=name)
    pre = (adapter("spatial_head_adapter")(out["spatial_features"])
           + adapter("temporal_head_adapter")(out["temporal_features"]))
    out["pre_logits"] = pre
    return head(self.num_classes, "head")(dropout(pre, deterministic=not train)), out


def joint_action_log_probs(verb_logits: jax.Array, noun_logits: jax.Array) -> jax.Array:
  """`log p(verb) + log p(noun)` for every (verb, noun): `[B, V]`, `[B, N]` -> `[B, V * N]`."""
  verb = jax.nn.log_softmax(verb_logits.astype(jnp.float32), axis=-1)
  noun = jax.nn.log_softmax(noun_logits.astype(jnp.float32), axis=-1)
  joint = verb[:, :, None] + noun[:, None, :]
  return joint.reshape(joint.shape[0], -1)


def _defaults() -> Dict[str, Any]:
  """CAST's own `config.model` key (`num_verbs`, `num_nouns` both 0: one single-label head)."""
  return {"cast": {"cross_dim": 384, "adapter_dim": 192, "mlp_adapter_scale": 0.5,
                   "num_verbs": 0, "num_nouns": 0}}


def _check(cfg: ml_collections.ConfigDict, input_shape: Sequence[int], field: str) -> None:
  """Checks CAST's keys (its experts and cross-attention are dense)."""
  del input_shape
  c = cfg.cast
  require(cfg.attention.kind == "dense", f"{field}.attention.kind",
          f"must be 'dense' for cast (pretrained dense experts), got {cfg.attention.kind!r}")
  require(c.cross_dim >= 1 and c.cross_dim % cfg.num_heads == 0, f"{field}.cast.cross_dim",
          f"must be a positive multiple of num_heads={cfg.num_heads}, got {c.cross_dim}")
  require(c.adapter_dim >= 1, f"{field}.cast.adapter_dim", f"must be >= 1, got {c.adapter_dim}")
  require(c.num_verbs >= 0 and c.num_nouns >= 0 and (c.num_verbs > 0) == (c.num_nouns > 0),
          f"{field}.cast.num_verbs",
          f"num_verbs and num_nouns must both be 0 (one head) or both > 0 (EPIC-Kitchens), "
          f"got {c.num_verbs} and {c.num_nouns}")


def _build(cfg: ml_collections.ConfigDict, num_classes: int) -> CAST:
  return CAST(num_classes=num_classes, patch_size=tuple(cfg.patch_size), dtype=DTYPES[cfg.dtype],
              **{key: cfg[key] for key in COMMON_KEYS},
              **{key: cfg.cast[key] for key in _defaults()["cast"]})


FAMILY = ModelFamily(
    name="cast", build=_build, defaults=_defaults, check=_check,
    mlp_activation=None,  # the experts fix their own: QuickGELU (CLIP), erf GELU (VideoMAE)
    stem_names=frozenset({"conv1", "class_embedding", "positional_embedding", "ln_pre",
                          "patch_embed"}))
