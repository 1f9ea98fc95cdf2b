"""Fused torch attention projections -> our per-head query/key/value/out kernels.

torch checkpoints (timm `attn.qkv`, CLIP `attn.in_proj_*`, VideoMAE `attn.qkv`)
hold one `Linear` of weight `[3 * D', D]` whose output rows are ordered
`[query | key | value]`, each `D' = heads * head_dim` wide. Our attention keeps
`query`, `key` and `value` as `DenseGeneral` kernels `[D, heads, head_dim]` with
biases `[heads, head_dim]`, and `out` as a kernel `[heads, head_dim, D]`.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

PARTS = ("query", "key", "value")


def split_qkv(weight: np.ndarray, bias: Optional[np.ndarray],
              num_heads: int) -> Dict[str, np.ndarray]:
  """Splits a fused torch q/k/v projection into our per-head kernels and biases.

  Args:
    weight: torch `Linear` weight `[3 * D', D]`, rows `[query | key | value]`.
    bias: its bias `[3 * D']`, or None to leave the biases out.
    num_heads: the head count; must divide `D'`.

  Returns:
    `{'query/kernel': [D, heads, head_dim], 'query/bias': [heads, head_dim], ...}`
    for query, key and value (no bias entries when `bias` is None).

  Raises:
    ValueError: the weight's rows do not split into three parts of `num_heads` heads.
  """
  rows, d = weight.shape
  width = rows // 3
  if rows % 3 or width % num_heads:
    raise ValueError(f"a fused q/k/v weight of shape {weight.shape} does not split into "
                     f"3 x {num_heads} heads")
  head_dim = width // num_heads
  out = {}
  for j, part in enumerate(PARTS):
    part_rows = slice(j * width, (j + 1) * width)
    out[f"{part}/kernel"] = weight[part_rows].T.reshape(d, num_heads, head_dim)
    if bias is not None:
      out[f"{part}/bias"] = bias[part_rows].reshape(num_heads, head_dim)
  return out


def split_out(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """A torch output projection `[D, D']` -> our `out/kernel` `[heads, head_dim, D]`.

  Args:
    weight: torch `Linear` weight of the attention's output projection.
    num_heads: the head count; must divide `D'`.

  Returns:
    The kernel `[heads, head_dim, D]`.
  """
  d, width = weight.shape
  return weight.T.reshape(num_heads, width // num_heads, d)
