"""Recording what each attention layer does: its weights and, for k-NN, the keys it keeps.

`MultiHeadAttention` calls `sow_attention` only when the caller made the
`intermediates` collection mutable (`model.apply(..., mutable=[COLLECTION])`);
otherwise nothing is computed, so recording never slows or changes a plain
forward. The record is computed from the same projected queries and keys as the
forward: logits `q.k / sqrt(d)` in float32 (plus bias and mask), for k-NN the
kept mask `logits >= the row's k-th largest logit` (`kth_largest`, ties kept),
and the softmax over the kept keys.

Each call sows one dict under the module's path:

* `weights`: float32 `[..., H, Nq, Nk]`, the attention weights;
* `kept`: bool `[..., H, Nq, Nk]`, the keys each query keeps (all True for
  attention that keeps every key);
* `logits`: float32 `[..., H, Nq, Nk]`, before the k-NN mask.

ViViT model 4 sows `attention_time` (`[B, S, H, T, T]`) and `attention_space`
(`[B, T, H, S, S]`) instead of `attention`. `attention_layers` flattens the
collection into `{layer name: record}`, named by module path.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit_knn.models.attention_backends import attention_logits, resolve_knn_k
from vivit_knn.models.kth_largest import kth_largest

Array = jax.Array

COLLECTION = "intermediates"
RECORD_NAMES = ("attention", "attention_time", "attention_space")


def attention_maps(query: Array, key: Array, spec: Any, *, bias: Optional[Array] = None,
                   mask: Optional[Array] = None, precision: Any = None) -> Dict[str, Array]:
  """Logits, kept mask and weights of one attention, as its forward computes them.

  Args:
    query: `[..., Nq, H, d]` projected queries.
    key: `[..., Nk, H, d]` projected keys.
    spec: the layer's `AttentionSpec`; a spec with a `knn_k` keeps each row's
      `knn_k` largest logits (ties at the threshold kept).
    bias: added to the logits; broadcastable to `[..., H, Nq, Nk]`.
    mask: boolean, broadcastable to `[..., H, Nq, Nk]`.
    precision: matmul precision.

  Returns:
    `{'logits', 'kept', 'weights'}`, each `[..., H, Nq, Nk]`.
  """
  logits = attention_logits(query, key, bias=bias, mask=mask, precision=precision)
  knn_k = getattr(spec, "knn_k", None)
  if knn_k is None:
    kept = jnp.ones(logits.shape, bool)
  else:
    kept = logits >= kth_largest(logits, resolve_knn_k(knn_k, key.shape[-3]))
  weights = jax.nn.softmax(jnp.where(kept, logits, -jnp.inf), axis=-1)
  return {"logits": logits, "kept": kept, "weights": weights}


def sow_attention(module: nn.Module, query: Array, key: Array, spec: Any, *,
                  bias: Optional[Array] = None, mask: Optional[Array] = None,
                  factorized: bool = False, precision: Any = None) -> None:
  """Sows `attention_maps` into `module`'s `intermediates` (see the module doc).

  With `factorized` (ViViT model 4, inputs `[B, T, S, H, d]`) the first half of
  the heads is recorded along time and the second half along space.
  """
  # The barrier keeps XLA from fusing the recording into the forward's own
  # computations, which could change how the forward is compiled and rounded.
  query, key, bias, mask = jax.lax.optimization_barrier((query, key, bias, mask))
  if not factorized:
    module.sow(COLLECTION, "attention",
               attention_maps(query, key, spec, bias=bias, mask=mask, precision=precision))
    return
  half = query.shape[-2] // 2
  swap = lambda x: jnp.swapaxes(x, 1, 2)
  module.sow(COLLECTION, "attention_time",
             attention_maps(swap(query[..., :half, :]), swap(key[..., :half, :]), spec,
                            precision=precision))
  module.sow(COLLECTION, "attention_space",
             attention_maps(query[..., half:, :], key[..., half:, :], spec,
                            precision=precision))


def _natural(name: str) -> tuple:
  """Sort key that puts `encoderblock_2` before `encoderblock_10`."""
  return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def layer_order(names: Iterable[str]) -> List[str]:
  """Layer names sorted by module path, numbers compared as numbers (blocks in depth order)."""
  return sorted(names, key=_natural)


def attention_layers(intermediates: Mapping[str, Any]) -> Dict[str, Dict[str, Array]]:
  """`{layer name: record}` from an `intermediates` collection, in module-path order.

  Paths are sorted with numbers compared as numbers (`layer_order`; a dict that
  passes through `jax.jit` comes back with sorted keys anyway, so call order could
  not be kept), so the blocks of a stack come in depth order.
  A layer's name is its module path joined by '/', e.g.
  `SpatialTransformer/encoderblock_0/MultiHeadDotProductAttention_0`; ViViT model
  4's two halves end in `:time` and `:space`. A module called more than once gets
  `#1`, `#2`, ... after its name for the later calls.
  """
  layers: Dict[str, Dict[str, Array]] = {}

  def walk(tree, path):
    for name, value in sorted(tree.items(), key=lambda item: _natural(item[0])):
      if name in RECORD_NAMES and isinstance(value, tuple):
        base = "/".join(path) + ("" if name == "attention" else ":" + name.split("_")[1])
        for i, record in enumerate(value):
          layers[base if i == 0 else f"{base}#{i}"] = dict(record)
      elif isinstance(value, Mapping):
        walk(value, path + (name,))

  walk(intermediates, ())
  return layers
