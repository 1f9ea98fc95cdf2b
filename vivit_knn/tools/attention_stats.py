"""Numbers behind the attention tools: recorded layers, top-k attention mass, rollout."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vivit_knn.models import attention_record

Records = Dict[str, Dict[str, np.ndarray]]


def record_attention(model: Any, params: Any, clips: np.ndarray) -> Tuple[np.ndarray, Records]:
  """`(logits [B, classes], {layer: {'weights', 'kept', 'logits'}})` of clips `[B, T, H, W, C]`."""

  @jax.jit
  def forward(params, clips):
    (logits, _), state = model.apply({"params": params}, clips, train=False,
                                     mutable=[attention_record.COLLECTION])
    return logits, attention_record.attention_layers(state[attention_record.COLLECTION])

  logits, layers = jax.device_get(forward(params, jnp.asarray(clips, jnp.float32)))
  return np.asarray(logits), {n: {k: np.asarray(v) for k, v in layers[n].items()}
                              for n in attention_record.layer_order(layers)}


def select_layers(names: Sequence[str], wanted: Sequence[str]) -> List[str]:
  """The layer names `wanted` asks for (names or indices into `names`); all when empty."""
  chosen = []
  for item in (str(item).strip() for item in wanted):
    if item.lstrip("-").isdigit() and -len(names) <= int(item) < len(names):
      item = names[int(item)]
    if item not in names:
      raise ValueError(f"--layers: no attention layer {item!r}; the model has {len(names)}: "
                       + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
    chosen.append(item)
  return chosen or list(names)


def topk_mass_curve(weights: jax.Array) -> jax.Array:
  """`[Nk]`: entry k-1 is the mean share of attention mass in each row's k largest weights.

  `weights` is `[..., Nk]` (rows sum to 1); the mean is over all rows.
  """
  top_first = -jnp.sort(-weights.astype(jnp.float32), axis=-1)
  return jnp.cumsum(top_first, axis=-1).reshape(-1, weights.shape[-1]).mean(axis=0)


def rollout(weights: Sequence[np.ndarray]) -> np.ndarray:
  """Attention rollout of consecutive layers' head-averaged weights `[..., N, N]`.

  Each layer's weights are mixed with the residual path, `0.5 A + 0.5 I` with rows
  renormalised, and the layers multiplied in order, first layer rightmost.
  Returns `[..., N, N]`: row q says how much each input token feeds output token q.
  """
  out = None
  for a in weights:
    a = 0.5 * np.asarray(a, np.float64) + 0.5 * np.eye(a.shape[-1])
    a = a / a.sum(-1, keepdims=True)
    out = a if out is None else a @ out
  return out
