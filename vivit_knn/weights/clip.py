"""OpenAI CLIP ViT image tower (PyTorch state dict) -> `CLIPVisionExpert` parameter tree.

Under `visual.`, `conv1`, `class_embedding`, `positional_embedding`, `ln_pre` and
`ln_post` keep their names; `transformer.resblocks.i` becomes `encoderblock_i`
(`_NORMS`, `_DENSES`, and `attn.in_proj_*` / `attn.out_proj` as
`MultiHeadDotProductAttention_0`; conventions: `qkv`). `visual.proj` (the
image-text projection) and the text tower are dropped; a dict without `visual.`
keys is read as the image tower alone. CLIP uses 64-wide heads.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

from vivit_knn.weights.qkv import Mapper
from vivit_knn.weights.state_dict import read_state_dict, unwrap
from vivit_knn.weights.tree import Flat, raise_unmatched, unflatten

CLIP_HEAD_DIM = 64
_PREFIX = "visual."
_BLOCKS = "transformer.resblocks."
_NORMS = {"ln_1": "LayerNorm_0", "ln_2": "LayerNorm_1"}
_DENSES = {"mlp.c_fc": "MlpBlock_0/Dense_0", "mlp.c_proj": "MlpBlock_0/Dense_1"}
_ATTN = "MultiHeadDotProductAttention_0"


def load_clip_state_dict(path: str) -> Flat:
  """Reads a CLIP checkpoint (TorchScript, `.safetensors` or `torch.save`) as float32 arrays."""
  return read_state_dict(path, "a CLIP checkpoint")


def convert_clip(state: Mapping[str, Any], num_heads: Optional[int] = None) -> Dict[str, Any]:
  """A CLIP state dict (numpy or torch arrays) -> the `CLIPVisionExpert` tree (numpy).

  `num_heads` defaults to width / 64. Image-tower keys with no mapping, and missing ones, raise.
  """
  state = unwrap(state)
  if any(k.startswith(_PREFIX) for k in state):
    state = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
  src = {k: np.asarray(v, np.float32) for k, v in state.items() if k != "proj"}
  if "conv1.weight" not in src:
    raise_unmatched("CLIP", unknown=src, missing=["visual.conv1.weight"])
  num_heads = num_heads or src["conv1.weight"].shape[0] // CLIP_HEAD_DIM
  m = Mapper(src, _PREFIX)
  m.put("conv1/kernel", m.take("conv1.weight").transpose(2, 3, 1, 0))
  for name in ("class_embedding", "positional_embedding"):
    m.put(name, m.take(name))
  for name in ("ln_pre", "ln_post"):
    m.norm(name, name)
  blocks = sorted({int(k[len(_BLOCKS):].split(".")[0]) for k in src if k.startswith(_BLOCKS)})
  for i in blocks:
    block, dst = f"{_BLOCKS}{i}", f"encoderblock_{i}"
    m.layers(block, dst, _NORMS, _DENSES)
    qkv, qkv_bias = m.take(f"{block}.attn.in_proj_weight"), m.take(f"{block}.attn.in_proj_bias")
    m.attention(f"{dst}/{_ATTN}", None if qkv_bias is None else qkv, qkv_bias,
                f"{block}.attn.out_proj", num_heads)
  raise_unmatched("CLIP", unknown=[_PREFIX + k for k in m.unused()], missing=m.missing)
  return unflatten(m.out)
