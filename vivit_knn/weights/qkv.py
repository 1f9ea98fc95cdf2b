"""torch state-dict layers (LayerNorm, Linear, fused attention) -> our flat parameter tree.

torch `Linear` weights are `[out, in]` (our kernels are their transposes); a
LayerNorm `weight` is our `scale`. A fused attention projection (timm and VideoMAE
`attn.qkv`, CLIP `attn.in_proj_*`) has rows `[query | key | value]`, each
`heads * head_dim`; ours are `DenseGeneral` kernels `[D, heads, head_dim]`, biases
`[heads, head_dim]`, and `out` a kernel `[heads, head_dim, D]`.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

PARTS = ("query", "key", "value")
# Heads of the standard ViT widths (Ti, S, B, L, H).
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def standard_heads(width: int, what: str) -> int:
  """The head count of a standard ViT `width`; ValueError asking for `num_heads` otherwise."""
  if width not in STANDARD_HEADS:
    raise ValueError(f"{what}: cannot tell the head count of width {width}; pass num_heads")
  return STANDARD_HEADS[width]


def split_qkv(weight: np.ndarray, bias: Optional[np.ndarray],
              num_heads: int) -> Dict[str, np.ndarray]:
  """Splits a fused q/k/v `weight` `[3 * D', D]` (and `bias` `[3 * D']`) into our kernels.

  Returns `{'query/kernel': [D, heads, head_dim], 'query/bias': [heads, head_dim], ...}`.
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
  """A torch output projection `[D, D']` -> our `out/kernel` `[heads, head_dim, D]`."""
  d, width = weight.shape
  return weight.T.reshape(num_heads, width // num_heads, d)


class Mapper:
  """Moves entries of a torch state dict `src` into `out` (ours), noting used and missing keys."""

  def __init__(self, src: Mapping[str, np.ndarray], missing_prefix: str = ""):
    self.src, self.out, self.used, self.missing, self._prefix = src, {}, set(), [], missing_prefix

  def take(self, key: str, required: bool = True) -> Optional[np.ndarray]:
    """`src[key]` (marked used), or None when absent."""
    if key not in self.src:
      if required:
        self.missing.append(self._prefix + key)
      return None
    self.used.add(key)
    return self.src[key]

  def put(self, dst: str, value: Optional[np.ndarray]) -> None:
    """Sets `out[dst]` unless `value` is None."""
    if value is not None:
      self.out[dst] = value

  def norm(self, name: str, dst: str, required: bool = True) -> None:
    """A LayerNorm: `<name>.weight` / `.bias` -> `<dst>/scale` / `bias`."""
    for theirs, ours in (("weight", "scale"), ("bias", "bias")):
      self.put(f"{dst}/{ours}", self.take(f"{name}.{theirs}", required))

  def dense(self, name: str, dst: str, required: bool = True) -> None:
    """A Linear: `<name>.weight` / `.bias` -> `<dst>/kernel` (transposed) / `bias`."""
    weight = self.take(f"{name}.weight", required)
    self.put(f"{dst}/kernel", None if weight is None else weight.T)
    self.put(f"{dst}/bias", self.take(f"{name}.bias", required))

  def layers(self, block: str, dst: str, norms: Mapping[str, str], denses: Mapping[str, str],
             required: bool = True) -> None:
    """One block's LayerNorms `norms` and Linears `denses`, `{theirs: ours}`."""
    for name, ours in norms.items():
      self.norm(f"{block}.{name}", f"{dst}/{ours}", required)
    for name, ours in denses.items():
      self.dense(f"{block}.{name}", f"{dst}/{ours}", required)

  def attention(self, dst: str, qkv: Optional[np.ndarray], qkv_bias: Optional[np.ndarray],
                proj: str, num_heads: int, required: bool = True) -> None:
    """A fused q/k/v projection (skipped when `qkv` is None) and the output Linear `proj`."""
    if qkv is not None:
      self.out.update({f"{dst}/{k}": v for k, v in split_qkv(qkv, qkv_bias, num_heads).items()})
    weight = self.take(f"{proj}.weight", required)
    self.put(f"{dst}/out/kernel", None if weight is None else split_out(weight, num_heads))
    self.put(f"{dst}/out/bias", self.take(f"{proj}.bias", required))

  def unused(self) -> set:
    """The keys of `src` nothing took."""
    return set(self.src) - self.used
