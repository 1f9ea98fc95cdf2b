"""timm converter: a real PyTorch state dict written here round-trips into our tree and gives
the timm ViT's logits (its equation in numpy, read from the torch layout).

PyTorch is not in requirements.txt (the library needs it only to read torch files), so
these tests install the pinned CPU build when it is missing, or skip (`tests/torch_util.py`).
"""

import re
from math import erf

import numpy as np
import pytest

from tests.test_weights import ARCH, IMAGES, assert_same_tree, our_logits, patchify, random_image_tree
from tests.torch_util import require_torch
from vivit_knn.weights.load import load_checkpoint
from vivit_knn.weights.tree import UnmatchedKeysError, flatten


def to_timm_state(tree):
  """Our image ViT tree -> timm's names and torch layouts (written independently of the converter)."""
  f = flatten(tree)
  d = f["embedding/kernel"].shape[-1]
  sd = {"cls_token": f["cls"], "pos_embed": f["Transformer/posembed_input/pos_embedding"],
        "patch_embed.proj.weight": f["embedding/kernel"].transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": f["embedding/bias"],
        "norm.weight": f["Transformer/encoder_norm/scale"],
        "norm.bias": f["Transformer/encoder_norm/bias"],
        "head.weight": f["head/kernel"].T, "head.bias": f["head/bias"]}
  for i in range(ARCH.num_layers):
    g = lambda k: f[f"Transformer/encoderblock_{i}/{k}"]
    a = "MultiHeadDotProductAttention_0"
    sd[f"blocks.{i}.norm1.weight"], sd[f"blocks.{i}.norm1.bias"] = g("LayerNorm_0/scale"), g("LayerNorm_0/bias")
    sd[f"blocks.{i}.norm2.weight"], sd[f"blocks.{i}.norm2.bias"] = g("LayerNorm_1/scale"), g("LayerNorm_1/bias")
    sd[f"blocks.{i}.attn.qkv.weight"] = np.concatenate(
        [g(f"{a}/{n}/kernel").reshape(d, d).T for n in ("query", "key", "value")])
    sd[f"blocks.{i}.attn.qkv.bias"] = np.concatenate(
        [g(f"{a}/{n}/bias").reshape(d) for n in ("query", "key", "value")])
    sd[f"blocks.{i}.attn.proj.weight"] = g(f"{a}/out/kernel").reshape(d, d).T
    sd[f"blocks.{i}.attn.proj.bias"] = g(f"{a}/out/bias")
    for j, fc in ((0, "fc1"), (1, "fc2")):
      sd[f"blocks.{i}.mlp.{fc}.weight"] = g(f"MlpBlock_0/Dense_{j}/kernel").T
      sd[f"blocks.{i}.mlp.{fc}.bias"] = g(f"MlpBlock_0/Dense_{j}/bias")
  return sd


def _ln(x, w, b, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * w + b


def gelu_erf(x):
  return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_timm_logits(sd, images, heads, gelu):
  """timm's VisionTransformer.forward, from the state dict (torch Linear: x @ W.T + b)."""
  g = lambda k: sd[k].astype(np.float64)
  lin = lambda x, name: x @ g(f"{name}.weight").T + g(f"{name}.bias")
  w = g("patch_embed.proj.weight")  # [D, C, p, p]
  d, p = w.shape[0], w.shape[-1]
  x = patchify(images.astype(np.float64), p) @ w.transpose(2, 3, 1, 0).reshape(-1, d)
  x = x + g("patch_embed.proj.bias")
  x = np.concatenate([np.broadcast_to(g("cls_token"), (x.shape[0], 1, d)), x], 1) + g("pos_embed")
  b, n, _ = x.shape
  for i in range(ARCH.num_layers):
    y = _ln(x, g(f"blocks.{i}.norm1.weight"), g(f"blocks.{i}.norm1.bias"))
    qkv = lin(y, f"blocks.{i}.attn.qkv").reshape(b, n, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
    att = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) / np.sqrt(d // heads)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    y = (att @ qkv[2]).transpose(0, 2, 1, 3).reshape(b, n, d)
    x = x + lin(y, f"blocks.{i}.attn.proj")
    y = _ln(x, g(f"blocks.{i}.norm2.weight"), g(f"blocks.{i}.norm2.bias"))
    x = x + lin(gelu(lin(y, f"blocks.{i}.mlp.fc1")), f"blocks.{i}.mlp.fc2")
  x = _ln(x, g("norm.weight"), g("norm.bias"))
  return lin(x[:, 0], "head")


def _save(torch, sd, path, wrap=False):
  state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
  if wrap:  # a training checkpoint, as TimeSformer's: {'model_state': {'model.<name>': ...}}
    state = {"epoch": 3, "model_state": {f"model.{k}": v for k, v in state.items()}}
  torch.save(state, path)


@pytest.mark.parametrize("wrap", [False, True])
def test_timm_state_dict_round_trips_and_gives_timm_logits(tmp_path, wrap):
  torch = require_torch()
  tree = random_image_tree(seed=3)
  sd = to_timm_state(tree)
  path = str(tmp_path / "vit.pth")
  _save(torch, sd, path, wrap)
  assert_same_tree(load_checkpoint(path, "timm", num_heads=ARCH.num_heads), tree)
  ours = our_logits(load_checkpoint(path, "timm", num_heads=ARCH.num_heads))
  # Same equation with flax's tanh GELU: equal to float32 precision.
  np.testing.assert_allclose(ours, np_timm_logits(sd, IMAGES, ARCH.num_heads, gelu_tanh),
                             rtol=1e-4, atol=1e-4)
  # timm's exact GELU differs from the tanh form by < 1e-3 per activation (5e-5 here).
  np.testing.assert_allclose(ours, np_timm_logits(sd, IMAGES, ARCH.num_heads, gelu_erf),
                             rtol=1e-3, atol=1e-3)


def test_width_without_standard_head_count_needs_num_heads(tmp_path):
  torch = require_torch()
  path = str(tmp_path / "vit.pth")
  _save(torch, to_timm_state(random_image_tree()), path)
  with pytest.raises(ValueError, match="num_heads"):
    load_checkpoint(path, "timm")


def test_unknown_timm_keys_are_listed(tmp_path):
  torch = require_torch()
  sd = to_timm_state(random_image_tree())
  sd["blocks.0.ls1.gamma"] = np.ones(16, np.float32)  # LayerScale: no place in our tree
  sd["fc_norm.weight"] = np.ones(16, np.float32)
  path = str(tmp_path / "vit.pth")
  _save(torch, sd, path)
  with pytest.raises(UnmatchedKeysError) as err:
    load_checkpoint(path, "timm", num_heads=2)
  listing = str(err.value).rsplit(": ", 1)[1]
  with open(listing) as f:
    assert re.search(r"(?s)2 checkpoint keys .*blocks\.0\.ls1\.gamma.*fc_norm\.weight", f.read())
