"""TimeSformer: the divided block against a numpy reference, zero-init temporal_fc, names, variants."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import tiny_config
from vivit_knn import config as config_lib
from vivit_knn.models.attention import AttentionSpec
from vivit_knn.models.registry import build_model
from vivit_knn.models.spacetime_attention import DividedSpaceTimeBlock
from vivit_knn.weights.timm import convert_timm

INPUT = (4, 24, 24, 3)  # 4 frames of 3x3 patches of 8x8


# ----------------------------------------------------------------------------- numpy reference


def np_layernorm(x, p, eps=1e-6):
  """flax LayerNorm."""
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu(x):
  """The exact (erf) GELU of PyTorch's `nn.GELU()`, as TimeSformer and X-ViT use."""
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def np_gelu_tanh(x):
  """flax's default (tanh) GELU, as scenic's ViViT uses."""
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_project(x, p):
  """DenseGeneral `[..., D] -> [..., H, d]`."""
  return np.einsum("...d,dhk->...hk", x, p["kernel"]) + p["bias"]


def np_attend(q, k, v):
  """softmax(q k^T / sqrt(d)) v over the token axis (-3) of `[..., N, H, d]`."""
  logits = np.einsum("...qhd,...khd->...hqk", q, k) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("...hqk,...khd->...qhd", w, v)


def np_mha(x, p, kv=None, transform=None):
  """Our MultiHeadAttention: q/k/v projections, optional (q, k, v) transform, `out`."""
  kv = x if kv is None else kv
  q, k, v = np_project(x, p["query"]), np_project(kv, p["key"]), np_project(kv, p["value"])
  if transform is not None:
    q, k, v = transform(q, k, v)
  y = np_attend(q, k, v)
  return np.einsum("...hk,hkd->...d", y, p["out"]["kernel"]) + p["out"]["bias"]


def np_mlp_residual(x, p, gelu=np_gelu):
  """x + MLP(LN(x)) with the image-ViT names (erf GELU unless told)."""
  m = p["MlpBlock_0"]
  y = np_layernorm(x, p["LayerNorm_1"])
  y = gelu(y @ m["Dense_0"]["kernel"] + m["Dense_0"]["bias"])
  return x + y @ m["Dense_1"]["kernel"] + m["Dense_1"]["bias"]


def np_divided_block(x, p, t, temporal=True, gelu=np_gelu):
  """TimeSformer's divided block written out on `[B, 1 + N*T, D]` ([CLS, patch-major])."""
  b, length, d = x.shape
  n = (length - 1) // t
  cls, patches = x[:, :1], x[:, 1:].reshape(b, n, t, d)
  if temporal:  # per patch over its T frames, CLS excluded
    y = np_mha(np_layernorm(patches, p["temporal_norm1"]), p["temporal_attn"])
    patches = patches + y @ p["temporal_fc"]["kernel"] + p["temporal_fc"]["bias"]
  out_cls, out_patches = np.zeros_like(cls), np.zeros_like(patches)
  for f in range(t):  # per frame, with its own copy of the CLS
    frame = np.concatenate([cls, patches[:, :, f]], axis=1)
    y = np_mha(np_layernorm(frame, p["LayerNorm_0"]), p["MultiHeadDotProductAttention_0"])
    out_cls += y[:, :1] / t
    out_patches[:, :, f] = patches[:, :, f] + y[:, 1:]
  x = np.concatenate([cls + out_cls, out_patches.reshape(b, n * t, d)], axis=1)
  return np_mlp_residual(x, p, gelu)


def perturb(params, seed=0, scale=0.3):
  """Adds noise to every parameter (so zero-initialised ones matter)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      tree, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def to_numpy(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ----------------------------------------------------------------------------- helpers


def timesformer_config(attention_type="divided_space_time", **model):
  config = tiny_config("spacetime", knn=False)  # one encoder: no factorised-encoder keys
  m = config.model
  m.name, m.attention_type, m.patch_size, m.classifier = "timesformer", attention_type, (8, 8, 1), "token"
  m.num_layers = 2
  for k, v in model.items():
    m[k] = v
  config_lib.check_model(m, INPUT)
  return config


def init(config, seed=0):
  model = build_model(config.model, num_classes=5)
  x = jax.random.normal(jax.random.key(seed + 1), (2,) + INPUT)
  return model, model.init(jax.random.key(seed), x)["params"], x


# ----------------------------------------------------------------------------- tests


def test_divided_block_equals_numpy_equation():
  t, n, d = 3, 4, 16
  block = DividedSpaceTimeBlock(mlp_dim=32, num_heads=2, num_frames=t)
  x = jax.random.normal(jax.random.key(0), (2, 1 + n * t, d))
  p = perturb(block.init(jax.random.key(1), x, True)["params"])
  got = block.apply({"params": p}, x, True)
  want = np_divided_block(np.asarray(x, np.float64), to_numpy(p), t)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_zero_temporal_fc_makes_the_temporal_branch_an_identity_at_init():
  t, n, d = 3, 4, 16
  block = DividedSpaceTimeBlock(mlp_dim=32, num_heads=2, num_frames=t)
  x = jax.random.normal(jax.random.key(0), (2, 1 + n * t, d))
  p = block.init(jax.random.key(1), x, True)["params"]
  assert not np.any(np.asarray(p["temporal_fc"]["kernel"]))
  assert not np.any(np.asarray(p["temporal_fc"]["bias"]))
  got = block.apply({"params": p}, x, True)
  want = np_divided_block(np.asarray(x, np.float64), to_numpy(p), t, temporal=False)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  # whatever the temporal attention's weights, the branch adds nothing yet
  p2 = dict(p, temporal_attn=perturb(p["temporal_attn"], seed=5),
            temporal_norm1=perturb(p["temporal_norm1"], seed=6))
  np.testing.assert_allclose(block.apply({"params": p2}, x, True), got, rtol=1e-6, atol=1e-6)


def test_from_scratch_switches_replace_the_zero_inits():
  _, p, _ = init(timesformer_config(time_embed_init_std=0.5, temporal_fc_zero_init=False))
  assert 0.3 < np.std(np.asarray(p["Transformer"]["time_embed"])) < 0.7
  assert np.std(np.asarray(p["Transformer"]["encoderblock_1"]["temporal_fc"]["kernel"])) > 0.05


BLOCK = {"LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"}
TEMPORAL = {"temporal_norm1", "temporal_attn", "temporal_fc"}


@pytest.mark.parametrize("attention_type", ["divided_space_time", "space_only", "joint_space_time"])
def test_param_tree_names(attention_type):
  _, p, _ = init(timesformer_config(attention_type))
  assert set(p) == {"embedding", "cls", "Transformer", "output_projection"}
  enc = p["Transformer"]
  time = set() if attention_type == "space_only" else {"time_embed"}
  assert set(enc) == {"posembed_input", "encoderblock_0", "encoderblock_1", "encoder_norm"} | time
  extra = TEMPORAL if attention_type == "divided_space_time" else set()
  assert set(enc["encoderblock_0"]) == BLOCK | extra
  assert enc["posembed_input"]["pos_embedding"].shape == (1, 10, 16)  # CLS + 3x3, per frame
  if time:
    assert enc["time_embed"].shape == (1, 4, 16) and not np.any(np.asarray(enc["time_embed"]))
  assert p["embedding"]["kernel"].shape == (1, 8, 8, 3, 16)
  assert not np.any(np.asarray(p["output_projection"]["kernel"]))


def _timm_timesformer_state(depth=2, d=16, heads=2, mlp=32, t=4, n=9, classes=5, seed=0):
  """A random state dict with timm TimeSformer's names and torch layouts."""
  rng = np.random.default_rng(seed)
  r = lambda *s: rng.normal(size=s).astype(np.float32)
  sd = {"cls_token": r(1, 1, d), "pos_embed": r(1, 1 + n, d), "time_embed": r(1, t, d),
        "patch_embed.proj.weight": r(d, 3, 8, 8), "patch_embed.proj.bias": r(d),
        "norm.weight": r(d), "norm.bias": r(d), "head.weight": r(classes, d), "head.bias": r(classes)}
  for i in range(depth):
    for norm in ("norm1", "norm2", "temporal_norm1"):
      sd[f"blocks.{i}.{norm}.weight"], sd[f"blocks.{i}.{norm}.bias"] = r(d), r(d)
    for attn in ("attn", "temporal_attn"):
      sd[f"blocks.{i}.{attn}.qkv.weight"], sd[f"blocks.{i}.{attn}.qkv.bias"] = r(3 * d, d), r(3 * d)
      sd[f"blocks.{i}.{attn}.proj.weight"], sd[f"blocks.{i}.{attn}.proj.bias"] = r(d, d), r(d)
    sd[f"blocks.{i}.temporal_fc.weight"], sd[f"blocks.{i}.temporal_fc.bias"] = r(d, d), r(d)
    sd[f"blocks.{i}.mlp.fc1.weight"], sd[f"blocks.{i}.mlp.fc1.bias"] = r(mlp, d), r(mlp)
    sd[f"blocks.{i}.mlp.fc2.weight"], sd[f"blocks.{i}.mlp.fc2.bias"] = r(d, mlp), r(d)
  return {f"model.{k}": v for k, v in sd.items()}  # TimeSformer's checkpoints carry `model.`


def _shapes(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_shapes(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = tuple(np.shape(v))
  return out


def test_timm_timesformer_checkpoint_maps_one_to_one_onto_the_param_tree():
  """Every timm TimeSformer tensor has exactly one place in our tree (and vice versa)."""
  _, p, _ = init(timesformer_config())
  converted = _shapes(convert_timm(_timm_timesformer_state(), num_heads=2))
  ours = _shapes(jax.tree.map(np.asarray, p))
  assert converted.pop("embedding/kernel") == ours.pop("embedding/kernel")[1:]  # 2D -> (1, ...)
  assert converted.pop("head/kernel") == ours.pop("output_projection/kernel")
  assert converted.pop("head/bias") == ours.pop("output_projection/bias")
  assert converted == ours


def test_frame_order_is_invisible_to_space_only_and_visible_to_divided_and_joint():
  perm = jnp.array([2, 0, 3, 1])
  for attention_type, invariant in (("space_only", True), ("divided_space_time", False),
                                    ("joint_space_time", False)):
    model, p, x = init(timesformer_config(attention_type))
    p = perturb(p, scale=0.1)
    a, _ = model.apply({"params": p}, x)
    b, _ = model.apply({"params": p}, x[:, perm])
    assert np.allclose(a, b, atol=1e-5) == invariant, attention_type


def test_token_order_is_cls_then_patch_major():
  """Changing frame 1 of patch 0 changes only token 1 + 0*T + 1 of the embedded sequence."""
  model, p, x = init(timesformer_config(num_layers=0))
  _, out = model.apply({"params": p}, x)
  patch = x.at[:, 1, :8, :8].add(1.0)  # frame 1, patch (0, 0)
  _, out2 = model.apply({"params": p}, patch)
  changed = np.any(np.abs(np.asarray(out2["encoded"] - out["encoded"])) > 1e-6, axis=(0, 2))
  assert np.flatnonzero(changed).tolist() == [1 + 0 * 4 + 1]


def test_any_attention_can_be_knn():
  config = timesformer_config(attention={"kind": "knn", "knn_k": 0.5},
                              temporal_attention={"kind": "knn", "knn_k": 1})
  model = build_model(config.model, 5)
  assert model.attention == AttentionSpec("knn", 0.5)
  assert model.temporal_attention == AttentionSpec("knn", 1)
  dense, p, x = init(timesformer_config())
  p = perturb(p, scale=0.1)
  a, _ = dense.apply({"params": p}, x)
  everything = timesformer_config(attention={"kind": "knn", "knn_k": 1.0},
                                  temporal_attention={"kind": "knn", "knn_k": 1.0})
  b, _ = build_model(everything.model, 5).apply({"params": p}, x)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  c, _ = model.apply({"params": p}, x)
  assert not np.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("mutate, field", [
    (lambda m: m.update(attention_type="divided"), r"model\.attention_type"),
    (lambda m: m.update(classifier="gap"), r"model\.classifier"),
    (lambda m: m.temporal_attention.update(kind="knn", knn_k=5), r"model\.temporal_attention\.knn_k"),
    (lambda m: m.update(name="timesformers"), r"model\.name"),
])
def test_bad_timesformer_configs_name_the_field(mutate, field):
  config = timesformer_config()
  mutate(config.model)
  with pytest.raises(ValueError, match=field):
    config_lib.check_model(config.model, INPUT)
