"""VideoMAE ViT (PyTorch state dict) -> `VideoMAEExpert` parameter tree.

Prefixes `encoder.` (pre-training checkpoints) and `backbone.` are stripped, after
the usual `module.`/`model.` unwrapping. Names (`i` the block index; torch
`Linear` weights are `[out, in]`; LayerNorm `weight` is our `scale`):

  patch_embed.proj.weight / bias -> patch_embed/kernel ([D, C, t, h, w] -> [t, h, w, C, D]) / bias
  blocks.i.norm1                 -> encoderblock_i/LayerNorm_0
  blocks.i.attn.qkv.weight       -> .../MultiHeadDotProductAttention_0/{query,key,value}/kernel
  blocks.i.attn.q_bias / v_bias  -> .../query/bias, .../value/bias (key/bias = 0)
  blocks.i.attn.qkv.bias         -> .../{query,key,value}/bias (checkpoints with a full qkv bias)
  blocks.i.attn.proj             -> .../MultiHeadDotProductAttention_0/out
  blocks.i.norm2                 -> .../LayerNorm_1
  blocks.i.mlp.fc1 / fc2         -> .../MlpBlock_0/Dense_0 / Dense_1
  fc_norm                        -> fc_norm (optional: CAST trains it from scratch otherwise)

VideoMAE has no key bias; the zero key bias we store is exactly equivalent (a key
bias adds the same `q . b` to every logit of a query, which softmax ignores).
Dropped on purpose: `head.*` (the old classifier), `norm.*` (the per-token final
norm of the variant without mean pooling), `mask_token`, `decoder.*`,
`encoder_to_decoder.*` (pre-training only) and `pos_embed` when it is the fixed
sinusoid table (it is recomputed; a learned one is an error).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

import numpy as np

from vivit_knn.models.experts import sinusoid_table
from vivit_knn.weights.qkv import split_out, split_qkv
from vivit_knn.weights.state_dict import read_state_dict, unwrap
from vivit_knn.weights.timm import STANDARD_HEADS
from vivit_knn.weights.tree import Flat, raise_unmatched, unflatten

_PREFIXES = ("encoder.", "backbone.")
_DROPPED = re.compile(r"^(head\.|norm\.|mask_token$|decoder\.|encoder_to_decoder\.)")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_NORMS = {"norm1": "LayerNorm_0", "norm2": "LayerNorm_1"}
_DENSES = {"mlp.fc1": "MlpBlock_0/Dense_0", "mlp.fc2": "MlpBlock_0/Dense_1"}
_ATTN = "MultiHeadDotProductAttention_0"


def load_videomae_state_dict(path: str) -> Flat:
  """Reads a VideoMAE checkpoint as `{name: float32 numpy array}`.

  Accepts VideoMAE's own training files (`{'model': ..., 'args': Namespace,
  'optimizer': ..., 'epoch': ...}`; torch reads them with only
  `argparse.Namespace` allowed beside tensors), plain state dicts, and
  `.safetensors` files (no torch needed).
  """
  return read_state_dict(path, "a VideoMAE checkpoint")


def _strip(state: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  state = unwrap(state)
  for prefix in _PREFIXES:
    if any(k.startswith(prefix) for k in state):
      # Pre-training checkpoints also hold a decoder; only the encoder is kept.
      state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
  return {k: np.asarray(v, np.float32) for k, v in state.items()}


def convert_videomae(state: Mapping[str, Any],
                     num_heads: Optional[int] = None) -> Dict[str, Any]:
  """A VideoMAE state dict (numpy or torch arrays) -> the `VideoMAEExpert` tree (numpy).

  `num_heads` defaults to the standard ViT head count of the width (12 for
  ViT-B). Raises `UnmatchedKeysError` listing keys with no mapping, expected keys
  that are missing, and a `pos_embed` that is not the sinusoid table.
  """
  src = _strip(state)
  if "patch_embed.proj.weight" not in src:
    raise_unmatched("VideoMAE", unknown=src, missing=["patch_embed.proj.weight"])
  d = src["patch_embed.proj.weight"].shape[0]
  if num_heads is None:
    if d not in STANDARD_HEADS:
      raise ValueError(f"VideoMAE: cannot tell the head count of width {d}; pass num_heads")
    num_heads = STANDARD_HEADS[d]
  out: Flat = {}
  used, missing, bad = set(), [], []

  def take(key: str, required: bool = True) -> Optional[np.ndarray]:
    if key not in src:
      if required:
        missing.append(key)
      return None
    used.add(key)
    return src[key]

  def norm(name: str, dst: str, required: bool = True) -> None:
    for theirs, ours in (("weight", "scale"), ("bias", "bias")):
      value = take(f"{name}.{theirs}", required)
      if value is not None:
        out[f"{dst}/{ours}"] = value

  out["patch_embed/kernel"] = take("patch_embed.proj.weight").transpose(2, 3, 4, 1, 0)
  bias = take("patch_embed.proj.bias")
  if bias is not None:
    out["patch_embed/bias"] = bias
  norm("fc_norm", "fc_norm", required=False)
  if "pos_embed" in src:
    used.add("pos_embed")
    table = src["pos_embed"].reshape(-1, d)
    if not np.allclose(table, sinusoid_table(table.shape[0], d), atol=1e-5):
      bad.append("pos_embed: a learned position embedding; the expert uses the fixed sinusoid "
                 "table")
  blocks = sorted({int(m.group(1)) for m in map(_BLOCK.match, src) if m})
  for i in blocks:
    block, dst = f"blocks.{i}", f"encoderblock_{i}"
    for name, ours in _NORMS.items():
      norm(f"{block}.{name}", f"{dst}/{ours}")
    for name, ours in _DENSES.items():
      for theirs, leaf in (("weight", "kernel"), ("bias", "bias")):
        value = take(f"{block}.{name}.{theirs}")
        if value is not None:
          out[f"{dst}/{ours}/{leaf}"] = value.T if leaf == "kernel" else value
    qkv = take(f"{block}.attn.qkv.weight")
    full_bias = take(f"{block}.attn.qkv.bias", required=False)
    if full_bias is None:
      q_bias, v_bias = take(f"{block}.attn.q_bias"), take(f"{block}.attn.v_bias")
      if q_bias is not None and v_bias is not None:
        full_bias = np.concatenate([q_bias, np.zeros_like(q_bias), v_bias])
    if qkv is not None:
      for key, value in split_qkv(qkv, full_bias, num_heads).items():
        out[f"{dst}/{_ATTN}/{key}"] = value
    proj, proj_bias = take(f"{block}.attn.proj.weight"), take(f"{block}.attn.proj.bias")
    if proj is not None:
      out[f"{dst}/{_ATTN}/out/kernel"] = split_out(proj, num_heads)
    if proj_bias is not None:
      out[f"{dst}/{_ATTN}/out/bias"] = proj_bias
  unknown = [k for k in set(src) - used if not _DROPPED.match(k)]
  raise_unmatched("VideoMAE", unknown=unknown, missing=missing, bad_shapes=bad)
  return unflatten(out)
