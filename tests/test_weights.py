"""Converters: original-ViT and big_vision `.npz` files written here round-trip into our tree,
and the converted model gives the source model's logits (a numpy ViT of its own layout)."""

import os

import jax
import numpy as np
import pytest

from tests.published import fuse_out, fuse_qkv
from tests.tiny import run_python
from vivit_knn.weights import big_vision, vit_npz
from vivit_knn.weights.image_vit import ImageViT, ImageViTArch, infer_arch
from vivit_knn.weights.load import load_checkpoint, load_orbax
from vivit_knn.weights.qkv import split_out, split_qkv
from vivit_knn.weights.tree import UnmatchedKeysError, flatten

ARCH = ImageViTArch(patch_size=(8, 8), hidden_size=16, num_heads=2, mlp_dim=32, num_layers=2,
                    num_classes=5)
IMAGES = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- numpy ViT


def _ln(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def patchify(images, p):
  """`[B, H, W, C]` -> `[B, N, p*p*C]`, rows in raster order, each patch `(h, w, C)`-flattened."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def attention(x, wq, bq, wk, bk, wv, bv, wo, bo, heads):
  """Multi-head self-attention with `[D, D]` projection matrices (x @ W + b)."""
  b, n, d = x.shape
  split = lambda y: y.reshape(b, n, heads, d // heads).transpose(0, 2, 1, 3)
  q, k, v = split(x @ wq + bq), split(x @ wk + bk), split(x @ wv + bv)
  w = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads))
  return (w @ v).transpose(0, 2, 1, 3).reshape(b, n, d) @ wo + bo


LINEN = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
PRE_LINEN_NAMES = ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")


def _embed(flat, images):
  kernel = flat["embedding/kernel"].astype(np.float64)
  p, d = kernel.shape[0], kernel.shape[-1]
  return patchify(images.astype(np.float64), p) @ kernel.reshape(-1, d) + flat["embedding/bias"]


def _with_cls(flat, x):
  cls = np.broadcast_to(flat["cls"].astype(np.float64), (x.shape[0], 1, x.shape[-1]))
  return np.concatenate([cls, x], 1)


def blocks_and_head(flat, x, heads, names):
  """Pre-LN blocks (module names `names`), final LayerNorm, head on the CLS."""
  ln0, mha, ln1, mlp = names
  g = lambda k: flat[k].astype(np.float64)
  d = x.shape[-1]
  layers = sorted({int(k.split("/")[1].split("_")[1]) for k in flat if "encoderblock_" in k})
  for i in layers:
    blk = lambda k: g(f"Transformer/encoderblock_{i}/{k}")
    proj = lambda n: (blk(f"{mha}/{n}/kernel").reshape(d, d), blk(f"{mha}/{n}/bias").reshape(d))
    y = _ln(x, blk(f"{ln0}/scale"), blk(f"{ln0}/bias"))
    (wq, bq), (wk, bk), (wv, bv) = proj("query"), proj("key"), proj("value")
    x = x + attention(y, wq, bq, wk, bk, wv, bv, blk(f"{mha}/out/kernel").reshape(d, d),
                      blk(f"{mha}/out/bias"), heads)
    y = _ln(x, blk(f"{ln1}/scale"), blk(f"{ln1}/bias"))
    y = gelu_tanh(y @ blk(f"{mlp}/Dense_0/kernel") + blk(f"{mlp}/Dense_0/bias"))
    x = x + y @ blk(f"{mlp}/Dense_1/kernel") + blk(f"{mlp}/Dense_1/bias")
  x = _ln(x, g("Transformer/encoder_norm/scale"), g("Transformer/encoder_norm/bias"))
  return x[:, 0] @ g("head/kernel") + g("head/bias")


def np_vit_npz_logits(flat, images, heads, names=PRE_LINEN_NAMES):
  """The original ViT's forward, read straight from its `.npz` names."""
  x = _with_cls(flat, _embed(flat, images)) + flat["Transformer/posembed_input/pos_embedding"]
  return blocks_and_head(flat, x, heads, names)


def np_big_vision_logits(flat, images, heads):
  """big_vision's forward: pos-emb added to the patches, then the (embedding-free) CLS."""
  x = _with_cls(flat, _embed(flat, images) + flat["pos_embedding"])
  return blocks_and_head(flat, x, heads, LINEN)


# ----------------------------------------------------------------------------- fixtures


def random_image_tree(arch=ARCH, seed=0):
  """Our image ViT tree with every array random (so every mapping error shows)."""
  images = np.zeros((1, 32, 32, 3), np.float32)
  shapes = jax.eval_shape(lambda: ImageViT(arch).init(jax.random.key(0), images))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def our_logits(tree, images=IMAGES):
  return np.asarray(ImageViT(infer_arch(tree)).apply({"params": tree}, images)[0])


PRE_LINEN = {"LayerNorm_1": "LayerNorm_2", "MultiHeadDotProductAttention_0":
             "MultiHeadDotProductAttention_1", "MlpBlock_0": "MlpBlock_3"}


def pre_linen_names(flat):
  out = {}
  for k, v in flat.items():
    for ours, theirs in PRE_LINEN.items():
      k = k.replace(f"/{ours}/", f"/{theirs}/")
    out[k] = v
  return out


def assert_same_tree(a, b):
  fa, fb = flatten(a), flatten(b)
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("pre_linen", [True, False])
def test_vit_npz_round_trips_and_gives_the_source_logits(tmp_path, pre_linen):
  tree = random_image_tree()
  flat = flatten(tree)
  if pre_linen:
    flat = pre_linen_names(flat)
  path = str(tmp_path / "vit.npz")
  np.savez(path, **flat)
  converted = load_checkpoint(path, "vit_npz")
  assert_same_tree(converted, tree)
  want = np_vit_npz_logits(flat, IMAGES, ARCH.num_heads, PRE_LINEN_NAMES if pre_linen else LINEN)
  np.testing.assert_allclose(our_logits(converted), want, rtol=1e-4, atol=1e-4)


def _big_vision_flat(seed=1, scan=False):
  """A big_vision checkpoint: top-level `pos_embedding` over the patches only."""
  flat = flatten(random_image_tree(seed=seed))
  pos = flat.pop("Transformer/posembed_input/pos_embedding")
  flat["pos_embedding"] = pos[:, 1:]
  if scan:
    blocks = sorted({k.split("/", 2)[2] for k in flat if "encoderblock_" in k})
    for rest in blocks:
      flat[f"Transformer/encoderblock/{rest}"] = np.stack(
          [flat.pop(f"Transformer/encoderblock_{i}/{rest}") for i in range(ARCH.num_layers)])
  return flat


@pytest.mark.parametrize("scan", [False, True])
def test_big_vision_npz_round_trips_and_gives_the_source_logits(tmp_path, scan):
  flat = _big_vision_flat(scan=scan)
  path = str(tmp_path / "bv.npz")
  np.savez(path, **flat)
  converted = flatten(load_checkpoint(path, "big_vision_npz"))
  pos = converted["Transformer/posembed_input/pos_embedding"]
  assert np.all(pos[:, 0] == 0)  # the CLS has no position embedding in big_vision
  np.testing.assert_array_equal(pos[:, 1:], flat["pos_embedding"])
  np.testing.assert_array_equal(converted["cls"], flat["cls"])
  unscanned = _big_vision_flat(scan=False)
  for k, v in unscanned.items():
    if k != "pos_embedding":
      np.testing.assert_array_equal(converted[k], v, err_msg=k)
  want = np_big_vision_logits(unscanned, IMAGES, ARCH.num_heads)
  tree = load_checkpoint(path, "big_vision_npz")
  np.testing.assert_allclose(our_logits(tree), want, rtol=1e-4, atol=1e-4)


def test_unmatched_keys_are_listed():
  flat = flatten(random_image_tree())
  flat["Transformer/encoderblock_0/LayerScale_0/gamma"] = np.ones(16, np.float32)
  del flat["Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"]
  with pytest.raises(UnmatchedKeysError) as err:
    vit_npz.convert_vit_npz(flat)
  msg = str(err.value)
  assert "Transformer/encoderblock_0/LayerScale_0/gamma" in msg
  assert "Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias" in msg


def test_big_vision_without_cls_token_is_rejected():
  flat = _big_vision_flat()
  del flat["cls"]
  flat["MAPHead_0/probe"] = np.zeros((1, 1, 16), np.float32)
  with pytest.raises(UnmatchedKeysError, match=r"(?s)MAPHead_0/probe.*cls"):
    big_vision.convert_big_vision(flat)


def test_convert_cli_writes_an_orbax_tree(tmp_path):
  tree = random_image_tree()
  src, dst = str(tmp_path / "vit.npz"), str(tmp_path / "vit.orbax")
  np.savez(src, **pre_linen_names(flatten(tree)))
  run_python(["-m", "vivit_knn.weights.convert", f"--from={src}", "--format=vit_npz",
              f"--to={dst}"])
  assert os.path.isdir(dst)
  assert_same_tree(load_orbax(dst), tree)
  assert_same_tree(load_checkpoint(dst, "orbax"), tree)


def test_qkv_split_and_fuse_follow_torch_row_order():
  rng = np.random.default_rng(4)
  heads, head_dim, d = 2, 4, 6
  width = heads * head_dim
  weight, bias = rng.normal(size=(3 * width, d)), rng.normal(size=3 * width)
  parts = split_qkv(weight, bias, heads)
  # Head h, channel c of part j is torch row j * width + h * head_dim + c.
  for j, part in enumerate(("query", "key", "value")):
    assert parts[f"{part}/kernel"].shape == (d, heads, head_dim)
    np.testing.assert_array_equal(parts[f"{part}/kernel"][:, 1, 3], weight[j * width + 7])
    np.testing.assert_array_equal(parts[f"{part}/bias"][1, 3], bias[j * width + 7])
  fused_weight, fused_bias = fuse_qkv(parts)
  np.testing.assert_array_equal(fused_weight, weight)
  np.testing.assert_array_equal(fused_bias, bias)
  assert "query/bias" not in split_qkv(weight, None, heads)
  out = rng.normal(size=(d, width))
  kernel = split_out(out, heads)
  np.testing.assert_array_equal(kernel[1, 3], out[:, 7])
  np.testing.assert_array_equal(fuse_out(kernel), out)
