"""Recording each attention layer's logits, weights and, for k-NN, the keys it keeps.

`MultiHeadAttention` calls `sow_attention` only when `intermediates` is mutable
(`model.apply(..., mutable=[COLLECTION])`), so a plain forward is unchanged. Each
call sows `attention` (ViViT model 4: `attention_time` `[B, S, H, T, T]` and
`attention_space` `[B, T, H, S, S]`) = `{'logits', 'kept', 'weights'}`, each
`[..., H, Nq, Nk]`: float32 logits `q.k / sqrt(d)` (+ bias, mask) before the k-NN
mask, the bool mask of kept keys (all True for dense) and the softmax over them.
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
                   mask: Optional[Array] = None) -> Dict[str, Array]:
  """`{'logits', 'kept', 'weights'}` of queries `[..., Nq, H, d]` and keys `[..., Nk, H, d]`."""
  logits = attention_logits(query, key, bias=bias, mask=mask)
  knn_k = getattr(spec, "knn_k", None)
  if knn_k is None:
    kept = jnp.ones(logits.shape, bool)
  else:
    kept = logits >= kth_largest(logits, resolve_knn_k(knn_k, key.shape[-3]))
  weights = jax.nn.softmax(jnp.where(kept, logits, -jnp.inf), axis=-1)
  return {"logits": logits, "kept": kept, "weights": weights}


def sow_attention(module: nn.Module, query: Array, key: Array, spec: Any, *,
                  bias: Optional[Array] = None, mask: Optional[Array] = None,
                  factorized: bool = False) -> None:
  """Sows `attention_maps` into `module`'s `intermediates` (see the module doc)."""
  # The barrier keeps XLA from fusing the recording into the forward's own
  # computations, which could change how the forward is compiled and rounded.
  query, key, bias, mask = jax.lax.optimization_barrier((query, key, bias, mask))
  if not factorized:
    module.sow(COLLECTION, "attention", attention_maps(query, key, spec, bias=bias, mask=mask))
    return
  half = query.shape[-2] // 2
  swap = lambda x: jnp.swapaxes(x, 1, 2)
  module.sow(COLLECTION, "attention_time",
             attention_maps(swap(query[..., :half, :]), swap(key[..., :half, :]), spec))
  module.sow(COLLECTION, "attention_space",
             attention_maps(query[..., half:, :], key[..., half:, :], spec))


def layer_order(names: Iterable[str]) -> List[str]:
  """Layer names sorted by module path, numbers compared as numbers (blocks in depth order)."""
  return sorted(names, key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])


def attention_layers(intermediates: Mapping[str, Any]) -> Dict[str, Dict[str, Array]]:
  """`{layer name: record}` from an `intermediates` collection, in `layer_order`.

  A name is the module path joined by '/' (`Transformer/encoderblock_0/...`); model 4's
  halves end in `:time` and `:space`; a module's later calls get `#1`, `#2`, ...
  """
  layers: Dict[str, Dict[str, Array]] = {}

  def walk(tree, path):
    for name in layer_order(tree):
      value = tree[name]
      if name in RECORD_NAMES and isinstance(value, tuple):
        base = "/".join(path) + ("" if name == "attention" else ":" + name.split("_")[1])
        for i, record in enumerate(value):
          layers[base if i == 0 else f"{base}#{i}"] = dict(record)
      elif isinstance(value, Mapping):
        walk(value, path + (name,))

  walk(intermediates, ())
  return layers
