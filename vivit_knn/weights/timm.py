"""timm-style PyTorch state dicts (ViT, and TimeSformer built on it) -> our image ViT trees.

`cls_token`, `pos_embed`, `time_embed` (TimeSformer), `patch_embed.proj` and `norm`
become `cls`, `Transformer/posembed_input/pos_embedding`, `Transformer/time_embed`,
`embedding` and `Transformer/encoder_norm`; `blocks.i` becomes
`Transformer/encoderblock_i` with its modules renamed by `_NORMS`, `_ATTNS` and
`_DENSES` (conventions: `qkv`); `pre_logits.fc` and `head` are the optional top.
The head count is not stored in a state dict: it is passed in, or read from the
standard ViT widths. timm's MLP uses the exact (erf) GELU, ours flax's tanh
approximation: outputs agree to about 1e-3 relative, not bit for bit.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np

from vivit_knn.weights.image_vit import check_image_tree
from vivit_knn.weights.qkv import Mapper, standard_heads
from vivit_knn.weights.state_dict import unwrap
from vivit_knn.weights.tree import raise_unmatched, unflatten

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_NORMS = {"norm1": "LayerNorm_0", "norm2": "LayerNorm_1", "temporal_norm1": "temporal_norm1"}
_ATTNS = {"attn": "MultiHeadDotProductAttention_0", "temporal_attn": "temporal_attn"}
_DENSES = {"mlp.fc1": "MlpBlock_0/Dense_0", "mlp.fc2": "MlpBlock_0/Dense_1",
           "temporal_fc": "temporal_fc"}
_TOP_DENSES = {"head": "head", "pre_logits.fc": "pre_logits"}


def convert_timm(state: Mapping[str, Any], num_heads: Optional[int] = None) -> dict:
  """A timm ViT / TimeSformer state dict (numpy arrays) -> our tree (checked).

  Raises UnmatchedKeysError listing keys with no mapping (e.g. LayerScale,
  register tokens, `fc_norm`) and keys the tree needs but the dict lacks.
  """
  src = {k: np.asarray(v, np.float32) for k, v in unwrap(state).items()}
  if num_heads is None:
    width = src["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in src else None
    num_heads = standard_heads(width, "timm")
  m = Mapper(src)
  for name, dst in (("cls_token", "cls"), ("pos_embed", "Transformer/posembed_input/pos_embedding"),
                    ("time_embed", "Transformer/time_embed")):
    m.put(dst, m.take(name, False))
  kernel = m.take("patch_embed.proj.weight", False)
  m.put("embedding/kernel", None if kernel is None else kernel.transpose(2, 3, 1, 0))
  m.put("embedding/bias", m.take("patch_embed.proj.bias", False))
  blocks = sorted({int(match.group(1)) for match in map(_BLOCK.match, src) if match})
  for i in blocks:
    block, dst = f"blocks.{i}", f"Transformer/encoderblock_{i}"
    m.layers(block, dst, _NORMS, _DENSES, False)
    for name, ours in _ATTNS.items():
      qkv = m.take(f"{block}.{name}.qkv.weight", False)
      if qkv is not None:
        bias = m.take(f"{block}.{name}.qkv.bias", False)
        m.attention(f"{dst}/{ours}", qkv, np.zeros(qkv.shape[0], qkv.dtype) if bias is None
                    else bias, f"{block}.{name}.proj", num_heads, False)
  m.norm("norm", "Transformer/encoder_norm", False)
  for name, ours in _TOP_DENSES.items():
    m.dense(name, ours, False)
  raise_unmatched("timm", unknown=m.unused())
  tree = unflatten(m.out)
  check_image_tree(tree, "timm")
  return tree
