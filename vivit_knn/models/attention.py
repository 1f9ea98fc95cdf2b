"""The one attention interface of every model block: `AttentionSpec` and the kinds it names.

A block receives one `AttentionSpec` (`kind` plus that kind's options, e.g.
`knn_k`) and hands it to `MultiHeadAttention`, which looks the kind up in
`ATTENTION_KINDS`. Adding a kind is its function (signature of
`attention_backends.dense_attention`) plus one line in that table:

* 'dense': softmax over all keys;
* 'knn': exact k-NN attention, keeping each query's `knn_k` largest logits
  (`knn_k` an int count or a fraction of the keys; see `resolve_knn_k`).

Layout (as in flax): query `[..., Nq, H, d]`, key/value `[..., Nk, H, d]`, output
`[..., Nq, H, d]`. The evaluation paths live in `attention_backends`, the exact
k-th-largest search in `kth_largest`.
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
from vivit_knn.models.kth_largest import kth_largest, knn_mask_logits

Array = jax.Array
Dtype = Any

__all__ = ["ATTENTION_KINDS", "DENSE", "PARAM_AXES", "AttentionKind", "AttentionSpec",
           "MultiHeadAttention", "attention_config", "attention_kind", "attention_spec",
           "check_attention_spec", "dot_product_attention", "factorized_dot_product_attention",
           "flash_dense_attention", "kth_largest", "knn_mask_logits", "one_piece_paths",
           "resolve_knn_k"]


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """Which attention a block uses: `kind` (a key of `ATTENTION_KINDS`) and its options.

  `knn_k` is the 'knn' kind's k: an int count or a float fraction of the keys.
  `impl` is the evaluation path, one of `attention_backends.IMPLS`: 'auto' (the
  default: the one-piece / CPU paths, or 'blocked' when one layer's logits would
  exceed `attention_backends.AUTO_BLOCKED_BYTES`), 'xla' (one-piece / CPU paths),
  'blocked' (query blocks with a recomputing backward pass: memory linear in the
  token count), 'pallas' (the fused kernel; TPU or GPU only) or 'pallas_interpret'
  (the same kernel in the Pallas interpreter, any backend; slow, for tests).
  """

  kind: str = "dense"
  knn_k: KnnK = None
  impl: str = "auto"


DENSE = AttentionSpec()


def _no_check(spec: AttentionSpec, num_keys: int, field: str) -> None:
  del spec, num_keys, field


@dataclasses.dataclass(frozen=True)
class AttentionKind:
  """One attention kind.

  Attributes:
    attend: `(query, key, value, spec, *, bias, mask, dropout_rng, dropout_rate,
      deterministic, dtype, precision) -> output`, shapes as in the module doc.
    check: `(spec, num_keys, field) -> None`; raises ValueError naming `field`
      when the spec cannot work for `num_keys` keys (run before compiling).
    takes_knn_k: whether a config's `knn_k` is this kind's option (else dropped).
  """

  attend: Callable[..., Array]
  check: Callable[[AttentionSpec, int, str], None] = _no_check
  takes_knn_k: bool = False


# Kind name -> implementation. A new kind is one line here.
ATTENTION_KINDS: Dict[str, AttentionKind] = {
    "dense": AttentionKind(backends.dense_attention),
    "knn": AttentionKind(backends.knn_attention, check=backends.check_knn, takes_knn_k=True),
}

# Logical axes of the projections' parameters (see `vivit_knn.train.sharding`):
# (path regex, axes by rank).
PARAM_AXES = (
    (r"(^|/)(query|key|value)/kernel$", ("embed", "heads", "kv")),
    (r"(^|/)(query|key|value)/bias$", ("heads", "kv")),
    (r"(^|/)out/kernel$", ("heads", "kv", "embed")),
)


def attention_kind(kind: str) -> AttentionKind:
  """The registered implementation of `kind`; raises ValueError for an unknown kind."""
  if kind not in ATTENTION_KINDS:
    raise ValueError(f"kind must be one of {tuple(ATTENTION_KINDS)}, got {kind!r}")
  return ATTENTION_KINDS[kind]


def attention_config(kind: str = "dense", knn_k: float = 2 / 3,
                     impl: str = "auto") -> ml_collections.ConfigDict:
  """An attention config block: `kind` (a key of `ATTENTION_KINDS`) and its options.

  `knn_k` is the 'knn' kind's k: a fraction (<= 1) of the keys, or a count.
  `impl` is the evaluation path (see `AttentionSpec`).
  """
  return ml_collections.ConfigDict({"kind": kind, "knn_k": float(knn_k), "impl": impl})


def attention_spec(cfg: ml_collections.ConfigDict) -> AttentionSpec:
  """Turns an `{kind, knn_k, impl}` config block into an AttentionSpec (checked later).

  `knn_k` at most 1 is a fraction of the key count; a larger whole number is a count;
  it is dropped for a kind that has no such option. A block without `impl` gets 'auto'.
  `check_attention_spec` checks the result.
  """
  k = cfg.knn_k
  if isinstance(k, float) and k > 1 and float(k).is_integer():
    k = int(k)
  kind = ATTENTION_KINDS.get(cfg.kind)
  return AttentionSpec(kind=cfg.kind, knn_k=k if kind is not None and kind.takes_knn_k else None,
                       impl=cfg.get("impl", "auto"))


def check_attention_spec(spec: AttentionSpec, num_keys: int, field: str) -> None:
  """Raises ValueError naming `field` unless `spec` works for `num_keys` keys.

  Checks the kind, the evaluation path and the kind's own options (e.g. `knn_k`).

  Args:
    spec: the attention of a config block (`attention_spec`).
    num_keys: how many keys each query of that attention sees.
    field: the block's config field, e.g. `'model.spatial_transformer.attention'`.
  """
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
  """Scaled dot-product attention of the kind `attention` names.

  Args:
    query: `[..., Nq, H, d]`.
    key: `[..., Nk, H, d]`.
    value: `[..., Nk, H, d]`.
    attention: the kind and its options, e.g. `AttentionSpec('knn', 2 / 3)`.
    bias: added to the logits; broadcastable to `[..., H, Nq, Nk]`.
    mask: boolean, broadcastable to `[..., H, Nq, Nk]`; False entries get a large
      negative logit.
    dropout_rng: PRNG key for attention-probability dropout.
    dropout_rate: dropout probability for the attention weights.
    deterministic: disables dropout.
    dtype: output dtype (default: the query's).
    precision: matmul precision.

  Returns:
    `[..., Nq, H, d]`. Logits are computed in float32 as `q.k / sqrt(d)` (+ bias,
    mask) and soft-maxed in float32; 'knn' sets the entries below each row's k-th
    largest logit to -inf after bias and mask, before the softmax (ties at the
    threshold are kept).

  Raises:
    ValueError: for an unknown kind, a bad `knn_k`, or dropout without a key.
  """
  return attention_kind(attention.kind).attend(
      query, key, value, attention, bias=bias, mask=mask, dropout_rng=dropout_rng,
      dropout_rate=dropout_rate, deterministic=deterministic, dtype=dtype, precision=precision)


def factorized_dot_product_attention(query: Array, key: Array, value: Array,
                                     attention: AttentionSpec = DENSE, *,
                                     dropout_rng: Optional[Array] = None,
                                     dropout_rate: float = 0.0, deterministic: bool = True,
                                     dtype: Optional[Dtype] = None,
                                     precision: PrecisionLike = None) -> Array:
  """ViViT model 4: half the heads attend along time, the other half along space.

  Inputs are `[B, T, S, H, d]`. Heads `[0, H/2)` attend, for each spatial position,
  over the T tokens of that position; heads `[H/2, H)` attend, for each frame, over
  its S tokens. The two halves are concatenated back along the head axis. Each
  half uses `attention` (a k-NN `knn_k` is resolved separately against T and S).

  Raises:
    ValueError: if the inputs are not 5-D or the head count H (`num_heads`) is odd.
  """
  for name, x in (("query", query), ("key", key), ("value", value)):
    if x.ndim != 5:
      raise ValueError(f"factorized attention expects {name} shaped [B, T, S, H, d], "
                       f"got {x.shape}")
  heads = query.shape[-2]
  if heads % 2:
    raise ValueError(f"factorized attention needs an even num_heads, got {heads}")
  half = heads // 2
  time_rng = space_rng = None
  if dropout_rng is not None:
    time_rng, space_rng = jax.random.split(dropout_rng)
  common = dict(dropout_rate=dropout_rate,
                deterministic=deterministic, dtype=dtype, precision=precision)

  def swap(x):  # [B, T, S, ...] <-> [B, S, T, ...]
    return jnp.swapaxes(x, 1, 2)

  over_time = dot_product_attention(swap(query[..., :half, :]), swap(key[..., :half, :]),
                                    swap(value[..., :half, :]), attention,
                                    dropout_rng=time_rng, **common)
  over_space = dot_product_attention(query[..., half:, :], key[..., half:, :],
                                     value[..., half:, :], attention,
                                     dropout_rng=space_rng, **common)
  return jnp.concatenate([swap(over_time), over_space], axis=-2)


QkvTransform = Callable[[Array, Array, Array], Tuple[Array, Array, Array]]


class MultiHeadAttention(nn.Module):
  """Multi-head dense / k-NN attention with scenic-compatible parameter names.

  The projections are `nn.DenseGeneral` modules named `query`, `key`, `value`
  (kernels `[D, H, D/H]`) and `out` (kernel `[H, D/H, out_features]`), the layout of
  flax's / scenic's `MultiHeadDotProductAttention`, so checkpoints map one to one.
  Applied with `mutable=['intermediates']`, it also records its attention weights
  and k-NN kept mask (`attention_record`); otherwise nothing extra is computed.

  Attributes:
    num_heads: number of heads; must divide `qkv_features`.
    qkv_features: total query/key/value width (default: the input width).
    out_features: output width (default: the input width).
    attention: the attention kind and its options (`AttentionSpec`).
    factorized: ViViT model 4 (`factorized_dot_product_attention`); the inputs are
      then `[B, T, S, D]` and no bias or mask is accepted.
    dropout_rate: dropout on the attention weights (rng stream 'dropout').
    dtype: computation dtype of the projections and of the output.
    param_dtype: parameter dtype.
    kernel_init: kernel initializer of all four projections.
    bias_init: bias initializer of all four projections.
    use_bias: whether the projections have biases.
    precision: matmul precision of projections and attention.
    qkv_transform: optional hook `(q, k, v) -> (q, k, v)` applied to the projected
      `[..., N, H, D/H]` tensors before attention (e.g. rotary embeddings or token
      shifts in later models).
  """

  num_heads: int
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  attention: AttentionSpec = DENSE
  factorized: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Array] = nn.initializers.xavier_uniform()
  bias_init: Callable[..., Array] = nn.initializers.zeros
  use_bias: bool = True
  precision: PrecisionLike = None
  qkv_transform: Optional[QkvTransform] = None

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array] = None, *,
               bias: Optional[Array] = None, mask: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """Attends from `inputs_q` `[..., Nq, D]` to `inputs_kv` (default: `inputs_q`).

    With `factorized=True` the inputs are `[B, T, S, D]`. Returns `[..., Nq,
    out_features]` in `dtype`.
    """
    if inputs_kv is None:
      inputs_kv = inputs_q
    features = self.qkv_features or inputs_q.shape[-1]
    if self.num_heads < 1 or features % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must be positive and divide "
                       f"qkv_features={features}")
    if self.factorized and (bias is not None or mask is not None):
      raise ValueError("factorized attention takes no bias or mask")
    head_dim = features // self.num_heads
    project = functools.partial(
        nn.DenseGeneral, features=(self.num_heads, head_dim), axis=-1, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        bias_init=self.bias_init, use_bias=self.use_bias, precision=self.precision)
    query = project(name="query")(inputs_q)
    key = project(name="key")(inputs_kv)
    value = project(name="value")(inputs_kv)
    if self.qkv_transform is not None:
      query, key, value = self.qkv_transform(query, key, value)
    if self.is_mutable_collection(attention_record.COLLECTION):
      # Only when asked: `model.apply(..., mutable=['intermediates'])`.
      attention_record.sow_attention(self, query, key, self.attention, bias=bias, mask=mask,
                                     factorized=self.factorized, precision=self.precision)

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    common = dict(dropout_rng=dropout_rng,
                  dropout_rate=self.dropout_rate, deterministic=deterministic,
                  dtype=self.dtype, precision=self.precision)
    if self.factorized:
      out = factorized_dot_product_attention(query, key, value, self.attention, **common)
    else:
      out = dot_product_attention(query, key, value, self.attention, bias=bias, mask=mask,
                                  **common)
    return nn.DenseGeneral(
        features=self.out_features or inputs_q.shape[-1], axis=(-2, -1), dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        bias_init=self.bias_init, use_bias=self.use_bias, precision=self.precision,
        name="out")(out)
