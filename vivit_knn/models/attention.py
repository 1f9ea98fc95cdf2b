"""The one attention interface of every block: `AttentionSpec`, its kinds, `MultiHeadAttention`.

Kinds (`ATTENTION_KINDS`; a new kind is a function with the signature of
`attention_backends.dense_attention` plus one line there): 'dense', and 'knn' (exact
k-NN attention keeping each query's `knn_k` largest logits). Layout as in flax:
query `[..., Nq, H, d]`, key/value `[..., Nk, H, d]`, output `[..., Nq, H, d]`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vivit_knn.models import attention_backends as backends
from vivit_knn.models import attention_record
from vivit_knn.models.attention_backends import (KnnK, PrecisionLike, flash_dense_attention,
                                                 resolve_knn_k)
from vivit_knn.models.cpu_paths import disabled as one_piece_paths
from vivit_knn.models.kth_largest import kth_largest

Array = jax.Array
Dtype = Any

__all__ = ["ATTENTION_KINDS", "DENSE", "PARAM_AXES", "AttentionKind", "AttentionSpec",
           "MultiHeadAttention", "attention_config", "attention_spec", "check_attention_spec",
           "dot_product_attention", "factorized_dot_product_attention", "flash_dense_attention",
           "kth_largest", "one_piece_paths", "resolve_knn_k"]


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """Which attention a block uses: `kind` (a key of `ATTENTION_KINDS`) and its options.

  `knn_k`: the 'knn' kind's k, a count or a fraction of the keys; `impl`: `backends.IMPLS`.
  """

  kind: str = "dense"
  knn_k: KnnK = None
  impl: str = "auto"


DENSE = AttentionSpec()


@dataclasses.dataclass(frozen=True)
class AttentionKind:
  """One kind: `attend` as `dense_attention`, `check(spec, num_keys, field)` raising ValueError.

  `takes_knn_k`: whether a config's `knn_k` is this kind's option (else dropped).
  """

  attend: Callable[..., Array]
  check: Callable[[AttentionSpec, int, str], None] = lambda spec, num_keys, field: None
  takes_knn_k: bool = False


ATTENTION_KINDS: Dict[str, AttentionKind] = {
    "dense": AttentionKind(backends.dense_attention),
    "knn": AttentionKind(backends.knn_attention, check=backends.check_knn, takes_knn_k=True),
}

# (path regex, logical axes by rank) of the projections (see `vivit_knn.train.sharding`).
PARAM_AXES = (
    (r"(^|/)(query|key|value)/kernel$", ("embed", "heads", "kv")),
    (r"(^|/)(query|key|value)/bias$", ("heads", "kv")),
    (r"(^|/)out/kernel$", ("heads", "kv", "embed")),
)


def attention_config(kind: str = "dense", knn_k: float = 2 / 3,
                     impl: str = "auto") -> ml_collections.ConfigDict:
  """An attention config block `{kind, knn_k, impl}` (see `AttentionSpec`)."""
  return ml_collections.ConfigDict({"kind": kind, "knn_k": float(knn_k), "impl": impl})


def attention_spec(cfg: ml_collections.ConfigDict) -> AttentionSpec:
  """The AttentionSpec of an `{kind, knn_k, impl}` block (checked by `check_attention_spec`).

  `knn_k` at most 1 is a fraction of the keys, a larger whole number a count; it is
  dropped for a kind without it. A block without `impl` gets 'auto'.
  """
  k = cfg.knn_k
  if isinstance(k, float) and k > 1 and float(k).is_integer():
    k = int(k)
  kind = ATTENTION_KINDS.get(cfg.kind)
  return AttentionSpec(kind=cfg.kind, knn_k=k if kind is not None and kind.takes_knn_k else None,
                       impl=cfg.get("impl", "auto"))


def check_attention_spec(spec: AttentionSpec, num_keys: int, field: str) -> None:
  """Raises ValueError naming `field` (the block's config field) unless `spec` fits `num_keys`."""
  if spec.kind not in ATTENTION_KINDS:
    raise ValueError(f"{field}.kind must be one of {tuple(ATTENTION_KINDS)}, got {spec.kind!r}")
  backends.check_impl(spec.impl, f"{field}.impl")
  ATTENTION_KINDS[spec.kind].check(spec, num_keys, field)


def dot_product_attention(query: Array, key: Array, value: Array,
                          attention: AttentionSpec = DENSE, *, bias: Optional[Array] = None,
                          mask: Optional[Array] = None, dropout_rng: Optional[Array] = None,
                          dropout_rate: float = 0.0, deterministic: bool = True,
                          dtype: Optional[Dtype] = None,
                          precision: PrecisionLike = None) -> Array:
  """Scaled dot-product attention of the kind `attention` names, e.g. `AttentionSpec('knn', 2 / 3)`.

  Logits `q.k / sqrt(d)` (+ `bias`, `mask=False` masked) are soft-maxed in float32; 'knn'
  first sets each row's entries below its k-th largest logit to -inf (ties kept).
  """
  if attention.kind not in ATTENTION_KINDS:
    raise ValueError(f"kind must be one of {tuple(ATTENTION_KINDS)}, got {attention.kind!r}")
  return ATTENTION_KINDS[attention.kind].attend(
      query, key, value, attention, bias=bias, mask=mask, dropout_rng=dropout_rng,
      dropout_rate=dropout_rate, deterministic=deterministic, dtype=dtype, precision=precision)


def factorized_dot_product_attention(query: Array, key: Array, value: Array,
                                     attention: AttentionSpec = DENSE, *,
                                     dropout_rng: Optional[Array] = None,
                                     dropout_rate: float = 0.0, deterministic: bool = True,
                                     dtype: Optional[Dtype] = None,
                                     precision: PrecisionLike = None) -> Array:
  """ViViT model 4 on `[B, T, S, H, d]`: heads `[0, H/2)` attend along T, `[H/2, H)` along S.

  A k-NN `knn_k` is resolved against T and S separately; an odd H raises ValueError.
  """
  heads = query.shape[-2]
  if heads % 2:
    raise ValueError(f"factorized attention needs an even num_heads, got {heads}")
  half = heads // 2
  time_rng = space_rng = None
  if dropout_rng is not None:
    time_rng, space_rng = jax.random.split(dropout_rng)
  common = dict(dropout_rate=dropout_rate, deterministic=deterministic, dtype=dtype,
                precision=precision)
  swap = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, S, ...] <-> [B, S, T, ...]

  over_time = dot_product_attention(swap(query[..., :half, :]), swap(key[..., :half, :]),
                                    swap(value[..., :half, :]), attention,
                                    dropout_rng=time_rng, **common)
  over_space = dot_product_attention(query[..., half:, :], key[..., half:, :],
                                     value[..., half:, :], attention,
                                     dropout_rng=space_rng, **common)
  return jnp.concatenate([swap(over_time), over_space], axis=-2)


QkvTransform = Callable[[Array, Array, Array], Tuple[Array, Array, Array]]


class MultiHeadAttention(nn.Module):
  """Multi-head dense / k-NN attention with the parameters of flax's `MultiHeadDotProductAttention`.

  Projections `query`, `key`, `value` (kernels `[D, H, D/H]`) and `out` (`[H, D/H,
  out_features]`), so scenic checkpoints map one to one. With
  `mutable=['intermediates']` it also records its attention (`attention_record`).
  `qkv_features`, `out_features` default to the input width; `factorized`: ViViT model 4
  on `[B, T, S, D]`; `qkv_transform`: a hook `(q, k, v) -> (q, k, v)` on the projected
  `[..., N, H, D/H]` tensors (e.g. X-ViT's frame shift).
  """

  num_heads: int
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  attention: AttentionSpec = DENSE
  factorized: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Array] = nn.initializers.xavier_uniform()
  use_bias: bool = True
  qkv_transform: Optional[QkvTransform] = None

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array] = None, *,
               bias: Optional[Array] = None, mask: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """Attends from `inputs_q` `[..., Nq, D]` to `inputs_kv` (default: `inputs_q`)."""
    if inputs_kv is None:
      inputs_kv = inputs_q
    features = self.qkv_features or inputs_q.shape[-1]
    if self.num_heads < 1 or features % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must be positive and divide "
                       f"qkv_features={features}")
    if self.factorized and (bias is not None or mask is not None):
      raise ValueError("factorized attention takes no bias or mask")
    dense = functools.partial(nn.DenseGeneral, dtype=self.dtype, kernel_init=self.kernel_init,
                              use_bias=self.use_bias)
    project = functools.partial(dense, features=(self.num_heads, features // self.num_heads),
                                axis=-1)
    query = project(name="query")(inputs_q)
    key = project(name="key")(inputs_kv)
    value = project(name="value")(inputs_kv)
    if self.qkv_transform is not None:
      query, key, value = self.qkv_transform(query, key, value)
    if self.is_mutable_collection(attention_record.COLLECTION):
      attention_record.sow_attention(self, query, key, self.attention, bias=bias, mask=mask,
                                     factorized=self.factorized)

    use_dropout = not deterministic and self.dropout_rate > 0.0
    common = dict(dropout_rng=self.make_rng("dropout") if use_dropout else None,
                  dropout_rate=self.dropout_rate,
                  deterministic=deterministic, dtype=self.dtype)
    if self.factorized:
      out = factorized_dot_product_attention(query, key, value, self.attention, **common)
    else:
      out = dot_product_attention(query, key, value, self.attention, bias=bias, mask=mask,
                                  **common)
    return dense(features=self.out_features or inputs_q.shape[-1], axis=(-2, -1),
                 name="out")(out)
