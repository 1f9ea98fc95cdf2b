"""CLIP / VideoMAE state dicts in their real key formats -> expert trees, checked against numpy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from tests.published import export_clip, export_videomae
from tests.torch_util import require_torch
from vivit_knn.models.experts import CLIPVisionExpert, VideoMAEExpert
from vivit_knn.weights import clip, videomae
from vivit_knn.weights.tree import UnmatchedKeysError, flatten

RNG = np.random.default_rng(0)


def _normal(*shape, scale=0.2):
  return RNG.normal(0.0, scale, shape).astype(np.float32)


def _ln(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def _attention(x, qkv_w, qkv_b, proj_w, proj_b, heads):
  n, d = x.shape[-2:]
  q, k, v = np.split(x @ qkv_w.T + qkv_b, 3, axis=-1)
  split = lambda a: a.reshape(a.shape[:-1] + (heads, d // heads)).swapaxes(-2, -3)
  q, k, v = split(q), split(k), split(v)
  logits = q @ k.swapaxes(-1, -2) / math.sqrt(d // heads)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = (w @ v).swapaxes(-2, -3).reshape(x.shape[:-2] + (n, d))
  return out @ proj_w.T + proj_b


# ------------------------------------------------------------------ CLIP

CLIP_WIDTH, CLIP_LAYERS, CLIP_PATCH, CLIP_IMAGE = 128, 2, 8, 16  # 2 heads of 64


def _clip_state():
  d, p = CLIP_WIDTH, CLIP_PATCH
  n = (CLIP_IMAGE // p) ** 2 + 1
  sd = {"visual.conv1.weight": _normal(d, 3, p, p), "visual.class_embedding": _normal(d),
        "visual.positional_embedding": _normal(n, d), "visual.proj": _normal(d, 32)}
  for name in ("ln_pre", "ln_post"):
    sd[f"visual.{name}.weight"], sd[f"visual.{name}.bias"] = 1 + _normal(d), _normal(d)
  for i in range(CLIP_LAYERS):
    b = f"visual.transformer.resblocks.{i}."
    for name in ("ln_1", "ln_2"):
      sd[b + name + ".weight"], sd[b + name + ".bias"] = 1 + _normal(d), _normal(d)
    sd[b + "attn.in_proj_weight"] = _normal(3 * d, d, scale=0.1)
    sd[b + "attn.in_proj_bias"] = _normal(3 * d)
    sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"] = _normal(d, d, scale=0.1), _normal(d)
    sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"] = _normal(4 * d, d, scale=0.1), _normal(4 * d)
    sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"] = _normal(d, 4 * d, scale=0.05), _normal(d)
  # The text tower shares the file; the converter must ignore it.
  sd.update({"positional_embedding": _normal(77, 64), "token_embedding.weight": _normal(10, 64),
             "transformer.resblocks.0.ln_1.weight": _normal(64), "logit_scale": _normal(1)})
  return sd


def _clip_reference(sd, images):
  """OpenAI CLIP's VisionTransformer.forward (without `proj`) on NHWC images."""
  v = {k[len("visual."):]: val for k, val in sd.items() if k.startswith("visual.")}
  d, c, p, _ = v["conv1.weight"].shape
  n, h, w, _ = images.shape
  patches = images.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
  x = patches.reshape(n, -1, c * p * p) @ v["conv1.weight"].reshape(d, -1).T
  x = np.concatenate([np.broadcast_to(v["class_embedding"], (n, 1, d)), x], 1)
  x = _ln(x + v["positional_embedding"], v["ln_pre.weight"], v["ln_pre.bias"], 1e-5)
  for i in range(CLIP_LAYERS):
    b = f"transformer.resblocks.{i}."
    y = _ln(x, v[b + "ln_1.weight"], v[b + "ln_1.bias"], 1e-5)
    x = x + _attention(y, v[b + "attn.in_proj_weight"], v[b + "attn.in_proj_bias"],
                       v[b + "attn.out_proj.weight"], v[b + "attn.out_proj.bias"], d // 64)
    y = _ln(x, v[b + "ln_2.weight"], v[b + "ln_2.bias"], 1e-5)
    y = y @ v[b + "mlp.c_fc.weight"].T + v[b + "mlp.c_fc.bias"]
    y = y / (1 + np.exp(-1.702 * y))  # QuickGELU
    x = x + y @ v[b + "mlp.c_proj.weight"].T + v[b + "mlp.c_proj.bias"]
  return _ln(x[:, 0], v["ln_post.weight"], v["ln_post.bias"], 1e-5)


def _clip_expert():
  return CLIPVisionExpert(hidden_size=CLIP_WIDTH, num_layers=CLIP_LAYERS, num_heads=2,
                          mlp_dim=4 * CLIP_WIDTH, num_patches=(CLIP_IMAGE // CLIP_PATCH) ** 2,
                          patch_size=(CLIP_PATCH, CLIP_PATCH))


def test_clip_state_dict_round_trip_and_features(tmp_path):
  torch = require_torch()
  sd = _clip_state()
  path = str(tmp_path / "clip.pt")
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
  tree = clip.convert_clip(clip.load_clip_state_dict(path))

  back = export_clip(tree)
  visual = {k for k in sd if k.startswith("visual.") and k != "visual.proj"}
  assert set(back) == visual
  for key in visual:
    np.testing.assert_array_equal(back[key], sd[key], err_msg=key)

  images = RNG.normal(size=(3, CLIP_IMAGE, CLIP_IMAGE, 3)).astype(np.float32)
  features, _ = _clip_expert().apply({"params": tree}, jnp.asarray(images))
  np.testing.assert_allclose(features, _clip_reference(sd, images), rtol=2e-4, atol=2e-4)


def test_clip_torchscript_archive_is_read(tmp_path):
  torch = require_torch()

  class Visual(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = torch.nn.Conv2d(3, 8, 4, 4, bias=False)
      self.ln_post = torch.nn.LayerNorm(8)

    def forward(self, x):
      return self.ln_post(self.conv1(x).flatten(2).mean(-1))

  class Model(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.visual = Visual()

    def forward(self, x):
      return self.visual(x)

  path = str(tmp_path / "scripted.pt")
  torch.jit.save(torch.jit.script(Model()), path)
  state = clip.load_clip_state_dict(path)
  assert set(state) == {"visual.conv1.weight", "visual.ln_post.weight", "visual.ln_post.bias"}


def test_clip_unmatched_keys_are_listed():
  sd = _clip_state()
  sd["visual.transformer.resblocks.1.attn.bogus"] = _normal(3)
  del sd["visual.ln_post.weight"]
  with pytest.raises(UnmatchedKeysError) as err:
    clip.convert_clip(sd)
  message = str(err.value)
  assert "visual.transformer.resblocks.1.attn.bogus" in message
  assert "visual.ln_post.weight" in message
  assert "token_embedding" not in message and "visual.proj" not in message


# ------------------------------------------------------------------ VideoMAE

VMAE_WIDTH, VMAE_LAYERS, VMAE_PATCH, VMAE_TUBELET = 192, 2, 8, 2  # 3 heads (ViT-Ti width)
VMAE_FRAMES, VMAE_IMAGE = 4, 16


def _sinusoid(n, d):
  """VideoMAE's get_sinusoid_encoding_table, written out."""
  table = np.array([[pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)]
                    for pos in range(n)])
  table[:, 0::2] = np.sin(table[:, 0::2])
  table[:, 1::2] = np.cos(table[:, 1::2])
  return table.astype(np.float32)


def _videomae_state(prefix="encoder."):
  d, p, t = VMAE_WIDTH, VMAE_PATCH, VMAE_TUBELET
  n = (VMAE_FRAMES // t) * (VMAE_IMAGE // p) ** 2
  sd = {"patch_embed.proj.weight": _normal(d, 3, t, p, p, scale=0.1),
        "patch_embed.proj.bias": _normal(d),
        "fc_norm.weight": 1 + _normal(d), "fc_norm.bias": _normal(d)}
  for i in range(VMAE_LAYERS):
    b = f"blocks.{i}."
    for name in ("norm1", "norm2"):
      sd[b + name + ".weight"], sd[b + name + ".bias"] = 1 + _normal(d), _normal(d)
    sd[b + "attn.qkv.weight"] = _normal(3 * d, d, scale=0.1)
    sd[b + "attn.q_bias"], sd[b + "attn.v_bias"] = _normal(d), _normal(d)
    sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = _normal(d, d, scale=0.1), _normal(d)
    sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = _normal(4 * d, d, scale=0.1), _normal(4 * d)
    sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = _normal(d, 4 * d, scale=0.05), _normal(d)
  sd = {prefix + k: v for k, v in sd.items()}
  # Pre-training / classifier extras that the expert does not use.
  sd.update({prefix + "pos_embed": _sinusoid(n, d)[None], "mask_token": _normal(1, 1, 96),
             "decoder.blocks.0.norm1.weight": _normal(96), "encoder_to_decoder.weight": _normal(96, d),
             prefix + "head.weight": _normal(5, d), prefix + "head.bias": _normal(5)})
  return sd


def _videomae_reference(sd, video):
  """VideoMAE's VisionTransformer.forward_features (mean pooling + fc_norm) on NTHWC video."""
  v = {k[len("encoder."):]: val for k, val in sd.items() if k.startswith("encoder.")}
  d, c, t, p, _ = v["patch_embed.proj.weight"].shape
  b, frames, h, w, _ = video.shape
  tubes = video.reshape(b, frames // t, t, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
  x = tubes.reshape(b, -1, c * t * p * p) @ v["patch_embed.proj.weight"].reshape(d, -1).T
  x = x + v["patch_embed.proj.bias"] + _sinusoid(x.shape[1], d)
  erf = np.frompyfunc(math.erf, 1, 1)
  for i in range(VMAE_LAYERS):
    blk = f"blocks.{i}."
    y = _ln(x, v[blk + "norm1.weight"], v[blk + "norm1.bias"], 1e-6)
    qkv_bias = np.concatenate([v[blk + "attn.q_bias"], np.zeros(d, np.float32), v[blk + "attn.v_bias"]])
    x = x + _attention(y, v[blk + "attn.qkv.weight"], qkv_bias, v[blk + "attn.proj.weight"],
                       v[blk + "attn.proj.bias"], d // 64)
    y = _ln(x, v[blk + "norm2.weight"], v[blk + "norm2.bias"], 1e-6)
    y = y @ v[blk + "mlp.fc1.weight"].T + v[blk + "mlp.fc1.bias"]
    y = 0.5 * y * (1 + erf(y / math.sqrt(2)).astype(np.float64))
    x = x + y @ v[blk + "mlp.fc2.weight"].T + v[blk + "mlp.fc2.bias"]
  return _ln(x.mean(1), v["fc_norm.weight"], v["fc_norm.bias"], 1e-6)


def test_videomae_state_dict_round_trip_and_features(tmp_path):
  torch = require_torch()
  sd = _videomae_state()
  path = str(tmp_path / "videomae.pth")
  torch.save({"module": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
  tree = videomae.convert_videomae(videomae.load_videomae_state_dict(path))
  attn = tree["encoderblock_0"]["MultiHeadDotProductAttention_0"]
  assert attn["query"]["kernel"].shape == (VMAE_WIDTH, 3, 64)
  np.testing.assert_array_equal(attn["key"]["bias"], 0.0)

  back = export_videomae(tree)
  kept = {k[len("encoder."):]: v for k, v in sd.items()
          if k.startswith("encoder.") and not k.startswith(("encoder.head", "encoder.pos_embed"))}
  assert set(back) == set(kept)
  for key, value in kept.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)

  video = RNG.normal(size=(2, VMAE_FRAMES, VMAE_IMAGE, VMAE_IMAGE, 3)).astype(np.float32)
  expert = VideoMAEExpert(hidden_size=VMAE_WIDTH, num_layers=VMAE_LAYERS, num_heads=3,
                          mlp_dim=4 * VMAE_WIDTH, patch_size=(VMAE_PATCH, VMAE_PATCH, VMAE_TUBELET))
  features, _ = expert.apply({"params": tree}, jnp.asarray(video))
  np.testing.assert_allclose(features, _videomae_reference(sd, video).astype(np.float32),
                             rtol=2e-4, atol=2e-4)


def test_videomae_backbone_prefix_full_qkv_bias_and_errors():
  sd = {k.replace("encoder.", "backbone."): v for k, v in _videomae_state().items()}
  d = VMAE_WIDTH
  full = _normal(3 * d)
  sd["backbone.blocks.1.attn.qkv.bias"] = full
  del sd["backbone.blocks.1.attn.q_bias"], sd["backbone.blocks.1.attn.v_bias"]
  tree = videomae.convert_videomae(sd)
  flat = flatten(tree)
  np.testing.assert_array_equal(
      flat["encoderblock_1/MultiHeadDotProductAttention_0/key/bias"].reshape(-1), full[d:2 * d])

  sd["backbone.blocks.0.attn.relative_position_bias_table"] = _normal(4, 3)
  sd["backbone.pos_embed"] = _normal(1, 16, d)  # a learned table
  del sd["backbone.blocks.0.mlp.fc2.bias"]
  with pytest.raises(UnmatchedKeysError) as err:
    videomae.convert_videomae(sd)
  message = str(err.value)
  for text in ("blocks.0.attn.relative_position_bias_table", "blocks.0.mlp.fc2.bias",
               "pos_embed: a learned position embedding"):
    assert text in message
  assert "decoder" not in message and "mask_token" not in message and "head" not in message
