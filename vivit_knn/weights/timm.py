"""timm-style PyTorch state dicts (ViT, and TimeSformer built on it) -> our trees.

Names map as follows (`i` the block index; torch `Linear` weights are
`[out, in]`, so kernels are their transposes):

  cls_token                     -> cls
  pos_embed                     -> Transformer/posembed_input/pos_embedding
  time_embed (TimeSformer)      -> Transformer/time_embed
  patch_embed.proj.weight       -> embedding/kernel  ([D, C, h, w] -> [h, w, C, D])
  blocks.i.norm1                -> Transformer/encoderblock_i/LayerNorm_0
  blocks.i.attn.qkv             -> .../MultiHeadDotProductAttention_0/{query, key, value}
  blocks.i.attn.proj            -> .../MultiHeadDotProductAttention_0/out
  blocks.i.norm2                -> .../LayerNorm_1
  blocks.i.mlp.fc1 / fc2        -> .../MlpBlock_0/Dense_0 / Dense_1
  blocks.i.temporal_norm1       -> .../temporal_norm1           (TimeSformer)
  blocks.i.temporal_attn.*      -> .../temporal_attn/*          (TimeSformer)
  blocks.i.temporal_fc          -> .../temporal_fc              (TimeSformer)
  norm                          -> Transformer/encoder_norm
  pre_logits.fc / head          -> pre_logits / head

LayerNorm `weight` is our `scale`. The fused `qkv` output is ordered
`[q | k | v]`, each `[heads, head_dim]`; the head count is not stored in a state
dict, so it is passed in (by default read from the standard ViT widths).
Files: `.pth`, `pytorch_model.bin` (torch) or `.safetensors` (no torch needed).
timm's MLP uses the exact (erf) GELU, ours flax's tanh approximation: outputs
agree to about 1e-3 relative, not bit for bit.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np

from vivit_knn.weights.image_vit import check_image_tree
from vivit_knn.weights.qkv import split_out, split_qkv
from vivit_knn.weights.state_dict import TORCH_REQUIREMENT, read_state_dict, unwrap
from vivit_knn.weights.tree import Flat, raise_unmatched, unflatten

__all__ = ["STANDARD_HEADS", "TORCH_REQUIREMENT", "convert_timm", "load_torch_state_dict",
           "unwrap"]

# Heads of the standard ViT widths (Ti, S, B, L, H).
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_NORMS = {"norm1": "LayerNorm_0", "norm2": "LayerNorm_1", "temporal_norm1": "temporal_norm1"}
_ATTNS = {"attn": "MultiHeadDotProductAttention_0", "temporal_attn": "temporal_attn"}
_DENSES = {"mlp.fc1": "MlpBlock_0/Dense_0", "mlp.fc2": "MlpBlock_0/Dense_1",
           "temporal_fc": "temporal_fc"}
_TOP_DENSES = {"head": "head", "pre_logits.fc": "pre_logits"}


def load_torch_state_dict(path: str) -> Flat:
  """Reads a PyTorch state dict (`.pth`/`.bin`, `.safetensors`, ...) as `{name: float32 array}`.

  See `vivit_knn.weights.state_dict.read_state_dict` (torch only for torch files;
  never runs code from the file).
  """
  return read_state_dict(path, "a timm checkpoint")


def _norm(out: Flat, src: Mapping[str, np.ndarray], name: str, dst: str, used: set) -> None:
  for torch_name, ours in (("weight", "scale"), ("bias", "bias")):
    key = f"{name}.{torch_name}"
    if key in src:
      out[f"{dst}/{ours}"] = src[key]
      used.add(key)


def _dense(out: Flat, src: Mapping[str, np.ndarray], name: str, dst: str, used: set) -> None:
  if f"{name}.weight" in src:
    out[f"{dst}/kernel"] = src[f"{name}.weight"].T
    used.add(f"{name}.weight")
  if f"{name}.bias" in src:
    out[f"{dst}/bias"] = src[f"{name}.bias"]
    used.add(f"{name}.bias")


def _attention(out: Flat, src: Mapping[str, np.ndarray], name: str, dst: str,
               num_heads: int, used: set) -> None:
  qkv = src.get(f"{name}.qkv.weight")
  if qkv is None:
    return
  bias = src.get(f"{name}.qkv.bias", np.zeros(qkv.shape[0], qkv.dtype))
  for key, value in split_qkv(qkv, bias, num_heads).items():
    out[f"{dst}/{key}"] = value
  used.update(k for k in (f"{name}.qkv.weight", f"{name}.qkv.bias") if k in src)
  proj = src.get(f"{name}.proj.weight")
  if proj is not None:
    out[f"{dst}/out/kernel"] = split_out(proj, num_heads)
    used.add(f"{name}.proj.weight")
  if f"{name}.proj.bias" in src:
    out[f"{dst}/out/bias"] = src[f"{name}.proj.bias"]
    used.add(f"{name}.proj.bias")


def convert_timm(state: Mapping[str, Any], num_heads: Optional[int] = None) -> dict:
  """A timm ViT / TimeSformer state dict (numpy arrays) -> our tree (checked).

  Raises UnmatchedKeysError listing keys with no mapping (e.g. LayerScale,
  register tokens, `fc_norm`) and keys the tree needs but the dict lacks.
  """
  src = {k: np.asarray(v, np.float32) for k, v in unwrap(state).items()}
  width = src["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in src else None
  if num_heads is None:
    if width not in STANDARD_HEADS:
      raise ValueError(f"timm: cannot tell the head count of width {width}; pass num_heads")
    num_heads = STANDARD_HEADS[width]
  out: Flat = {}
  used: set = set()
  for name, dst in (("cls_token", "cls"), ("pos_embed", "Transformer/posembed_input/pos_embedding"),
                    ("time_embed", "Transformer/time_embed")):
    if name in src:
      out[dst] = src[name]
      used.add(name)
  if "patch_embed.proj.weight" in src:
    out["embedding/kernel"] = src["patch_embed.proj.weight"].transpose(2, 3, 1, 0)
    used.add("patch_embed.proj.weight")
  if "patch_embed.proj.bias" in src:
    out["embedding/bias"] = src["patch_embed.proj.bias"]
    used.add("patch_embed.proj.bias")
  blocks = sorted({int(m.group(1)) for m in map(_BLOCK.match, src) if m})
  for i in blocks:
    block, dst = f"blocks.{i}", f"Transformer/encoderblock_{i}"
    for name, ours in _NORMS.items():
      _norm(out, src, f"{block}.{name}", f"{dst}/{ours}", used)
    for name, ours in _ATTNS.items():
      _attention(out, src, f"{block}.{name}", f"{dst}/{ours}", num_heads, used)
    for name, ours in _DENSES.items():
      _dense(out, src, f"{block}.{name}", f"{dst}/{ours}", used)
  _norm(out, src, "norm", "Transformer/encoder_norm", used)
  for name, ours in _TOP_DENSES.items():
    _dense(out, src, name, ours, used)
  raise_unmatched("timm", unknown=set(src) - used)
  tree = unflatten(out)
  check_image_tree(tree, "timm")
  return tree
