"""VideoMAE ViT (PyTorch state dict) -> `VideoMAEExpert` parameter tree.

After the usual unwrapping, prefixes `encoder.` (pre-training) and `backbone.` are
stripped. `patch_embed.proj` becomes `patch_embed` (kernel `[t, h, w, C, D]`),
`blocks.i` `encoderblock_i` (`_NORMS`, `_DENSES`, and `attn` as
`MultiHeadDotProductAttention_0`; conventions: `qkv`), `fc_norm` is optional
(CAST trains it from scratch otherwise). Checkpoints with `q_bias` / `v_bias` get
a zero key bias, which is exactly equivalent (it adds the same `q . b` to every
logit of a query, which softmax ignores). Dropped on purpose: `_DROPPED`, and a
`pos_embed` that is the fixed sinusoid table (recomputed; a learned one is an
error).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

import numpy as np

from vivit_knn.models.experts import sinusoid_table
from vivit_knn.weights.qkv import Mapper, standard_heads
from vivit_knn.weights.state_dict import read_state_dict, unwrap
from vivit_knn.weights.tree import Flat, raise_unmatched, unflatten

_PREFIXES = ("encoder.", "backbone.")
_DROPPED = re.compile(r"^(head\.|norm\.|mask_token$|decoder\.|encoder_to_decoder\.)")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_NORMS = {"norm1": "LayerNorm_0", "norm2": "LayerNorm_1"}
_DENSES = {"mlp.fc1": "MlpBlock_0/Dense_0", "mlp.fc2": "MlpBlock_0/Dense_1"}
_ATTN = "MultiHeadDotProductAttention_0"


def load_videomae_state_dict(path: str) -> Flat:
  """Reads a VideoMAE checkpoint (its training files, a state dict or `.safetensors`) as float32."""
  return read_state_dict(path, "a VideoMAE checkpoint")


def convert_videomae(state: Mapping[str, Any],
                     num_heads: Optional[int] = None) -> Dict[str, Any]:
  """A VideoMAE state dict (numpy or torch arrays) -> the `VideoMAEExpert` tree (numpy).

  `num_heads` defaults to the standard ViT head count of the width (12 for ViT-B).
  """
  state = unwrap(state)
  for prefix in _PREFIXES:
    if any(k.startswith(prefix) for k in state):
      state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
  src = {k: np.asarray(v, np.float32) for k, v in state.items()}
  if "patch_embed.proj.weight" not in src:
    raise_unmatched("VideoMAE", unknown=src, missing=["patch_embed.proj.weight"])
  d = src["patch_embed.proj.weight"].shape[0]
  num_heads = standard_heads(d, "VideoMAE") if num_heads is None else num_heads
  m, bad = Mapper(src), []
  m.put("patch_embed/kernel", m.take("patch_embed.proj.weight").transpose(2, 3, 4, 1, 0))
  m.put("patch_embed/bias", m.take("patch_embed.proj.bias"))
  m.norm("fc_norm", "fc_norm", required=False)
  if "pos_embed" in src:
    m.used.add("pos_embed")
    table = src["pos_embed"].reshape(-1, d)
    if not np.allclose(table, sinusoid_table(table.shape[0], d), atol=1e-5):
      bad.append("pos_embed: a learned position embedding; the expert uses the fixed sinusoid "
                 "table")
  blocks = sorted({int(match.group(1)) for match in map(_BLOCK.match, src) if match})
  for i in blocks:
    block, dst = f"blocks.{i}", f"encoderblock_{i}"
    m.layers(block, dst, _NORMS, _DENSES)
    qkv = m.take(f"{block}.attn.qkv.weight")
    full_bias = m.take(f"{block}.attn.qkv.bias", required=False)
    if full_bias is None:
      q_bias, v_bias = m.take(f"{block}.attn.q_bias"), m.take(f"{block}.attn.v_bias")
      if q_bias is not None and v_bias is not None:
        full_bias = np.concatenate([q_bias, np.zeros_like(q_bias), v_bias])
    m.attention(f"{dst}/{_ATTN}", qkv, full_bias, f"{block}.attn.proj", num_heads)
  unknown = [k for k in m.unused() if not _DROPPED.match(k)]
  raise_unmatched("VideoMAE", unknown=unknown, missing=m.missing, bad_shapes=bad)
  return unflatten(m.out)
