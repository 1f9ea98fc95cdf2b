"""OpenAI CLIP ViT image tower (PyTorch state dict) -> `CLIPVisionExpert` parameter tree.

Names (`i` the block index; torch `Linear` weights are `[out, in]`, so kernels are
their transposes; LayerNorm `weight` is our `scale`):

  visual.conv1.weight                    -> conv1/kernel ([D, C, h, w] -> [h, w, C, D])
  visual.class_embedding                 -> class_embedding
  visual.positional_embedding            -> positional_embedding
  visual.ln_pre                          -> ln_pre
  visual.transformer.resblocks.i.ln_1    -> encoderblock_i/LayerNorm_0
  ....attn.in_proj_weight / in_proj_bias -> .../MultiHeadDotProductAttention_0/{query,key,value}
  ....attn.out_proj                      -> .../MultiHeadDotProductAttention_0/out
  ....ln_2                               -> .../LayerNorm_1
  ....mlp.c_fc / mlp.c_proj              -> .../MlpBlock_0/Dense_0 / Dense_1
  visual.ln_post                         -> ln_post

`visual.proj` (the image-text projection) is not part of the expert and is
dropped, as are the text tower's keys (everything outside `visual.`). A dict
without any `visual.` key is read as the image tower alone (`model.visual`'s
own state dict). The head count is not stored; CLIP uses 64-wide heads.

Files: OpenAI's TorchScript archives (`ViT-B-16.pt`, fp16; read without running
them), `.safetensors` or `torch.save` state dicts. Arrays come out float32.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

from vivit_knn.weights.qkv import split_out, split_qkv
from vivit_knn.weights.state_dict import read_state_dict, unwrap
from vivit_knn.weights.tree import Flat, raise_unmatched, unflatten

CLIP_HEAD_DIM = 64
_PREFIX = "visual."
_BLOCKS = "transformer.resblocks."
# Image-tower keys the expert does not use.
DROPPED = ("proj",)
_NORMS = {"ln_1": "LayerNorm_0", "ln_2": "LayerNorm_1"}
_DENSES = {"mlp.c_fc": "MlpBlock_0/Dense_0", "mlp.c_proj": "MlpBlock_0/Dense_1"}
_ATTN = "MultiHeadDotProductAttention_0"


def load_clip_state_dict(path: str) -> Flat:
  """Reads a CLIP checkpoint as `{name: float32 numpy array}`.

  Accepts OpenAI's TorchScript archive (read without torch and without running
  its code, see `vivit_knn.weights.safe_pickle`), a `.safetensors` file, or a
  state dict saved with `torch.save` (needs torch).
  """
  return read_state_dict(path, "a CLIP checkpoint")


def _visual(state: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  state = unwrap(state)
  if any(k.startswith(_PREFIX) for k in state):
    state = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
  return {k: np.asarray(v, np.float32) for k, v in state.items() if k not in DROPPED}


def convert_clip(state: Mapping[str, Any], num_heads: Optional[int] = None) -> Dict[str, Any]:
  """A CLIP state dict (numpy or torch arrays) -> the `CLIPVisionExpert` tree (numpy).

  `num_heads` defaults to width / 64. Raises `UnmatchedKeysError` listing every
  image-tower key with no mapping, and every expected key that is missing.
  """
  src = _visual(state)
  if "conv1.weight" not in src:
    raise_unmatched("CLIP", unknown=src, missing=["visual.conv1.weight"])
  d = src["conv1.weight"].shape[0]
  num_heads = num_heads or d // CLIP_HEAD_DIM
  out: Flat = {}
  used, missing = set(), []

  def take(key: str) -> Optional[np.ndarray]:
    if key not in src:
      missing.append(_PREFIX + key)
      return None
    used.add(key)
    return src[key]

  def norm(name: str, dst: str) -> None:
    for theirs, ours in (("weight", "scale"), ("bias", "bias")):
      value = take(f"{name}.{theirs}")
      if value is not None:
        out[f"{dst}/{ours}"] = value

  def dense(name: str, dst: str) -> None:
    weight, bias = take(f"{name}.weight"), take(f"{name}.bias")
    if weight is not None:
      out[f"{dst}/kernel"] = weight.T
    if bias is not None:
      out[f"{dst}/bias"] = bias

  out["conv1/kernel"] = take("conv1.weight").transpose(2, 3, 1, 0)
  for name in ("class_embedding", "positional_embedding"):
    value = take(name)
    if value is not None:
      out[name] = value
  norm("ln_pre", "ln_pre")
  norm("ln_post", "ln_post")
  blocks = sorted({int(k[len(_BLOCKS):].split(".")[0]) for k in src if k.startswith(_BLOCKS)})
  for i in blocks:
    block, dst = f"{_BLOCKS}{i}", f"encoderblock_{i}"
    for name, ours in _NORMS.items():
      norm(f"{block}.{name}", f"{dst}/{ours}")
    for name, ours in _DENSES.items():
      dense(f"{block}.{name}", f"{dst}/{ours}")
    qkv, qkv_bias = take(f"{block}.attn.in_proj_weight"), take(f"{block}.attn.in_proj_bias")
    if qkv is not None and qkv_bias is not None:
      for key, value in split_qkv(qkv, qkv_bias, num_heads).items():
        out[f"{dst}/{_ATTN}/{key}"] = value
    proj, proj_bias = take(f"{block}.attn.out_proj.weight"), take(f"{block}.attn.out_proj.bias")
    if proj is not None:
      out[f"{dst}/{_ATTN}/out/kernel"] = split_out(proj, num_heads)
    if proj_bias is not None:
      out[f"{dst}/{_ATTN}/out/bias"] = proj_bias
  raise_unmatched("CLIP", unknown=[_PREFIX + k for k in set(src) - used], missing=missing)
  return unflatten(out)
