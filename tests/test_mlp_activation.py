"""MLP activation by family, against numpy rewrites of the original blocks.

TimeSformer and X-ViT come from PyTorch code whose `nn.GELU()` is the exact
(erf) GELU; scenic's ViViT uses flax's tanh form. The two differ by up to
about 2e-4 per activation, which grows to about 1e-3 per block, so a model
built from released weights must use its family's form. The references below
are written from the original code (TimeSformer's `Block.forward`, timm's
`Attention` and `Mlp`, X-ViT's `VitHead`) on torch-layout weights
(`Linear`: `x @ W.T + b`), in float64, and import nothing from the package.
"""

import math

import jax
import numpy as np
import pytest

from tests.tiny import load_config, tiny_config
from vivit_knn import config as config_lib
from vivit_knn.models.registry import build_model

INPUT = (4, 24, 24, 3)  # 4 frames of 3x3 patches of 8x8
ATOL = 1e-5


# ----------------------------------------------------------------------------- numpy reference


def gelu_erf(x):
  """PyTorch's `nn.GELU()`: x * Phi(x), with the exact normal CDF."""
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def gelu_tanh(x):
  """flax's `nn.gelu` (scenic's MLP): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, sd, name, eps=1e-6):
  """torch `nn.LayerNorm(eps=1e-6)` (TimeSformer's and X-ViT's `norm_layer`)."""
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def linear(x, sd, name):
  """torch `nn.Linear`."""
  return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def mlp(x, sd, name, gelu):
  """timm's `Mlp`: fc1, activation, fc2."""
  return linear(gelu(linear(x, sd, f"{name}.fc1")), sd, f"{name}.fc2")


def attention(x, sd, name, heads):
  """timm's `Attention`: fused qkv, per-head softmax(q k^T * d^-1/2) v, proj."""
  b, n, c = x.shape
  qkv = linear(x, sd, f"{name}.qkv").reshape(b, n, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]
  logits = q @ k.transpose(0, 1, 3, 2) * (c // heads) ** -0.5
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return linear((w @ v).transpose(0, 2, 1, 3).reshape(b, n, c), sd, f"{name}.proj")


def timesformer_block(x, sd, t, heads, gelu):
  """TimeSformer's `Block.forward` for 'divided_space_time' on `[B, 1 + (h w t), D]`."""
  b, length, m = x.shape
  n = (length - 1) // t
  # Temporal: 'b (h w t) m -> (b h w) t m', CLS excluded.
  xt = x[:, 1:].reshape(b * n, t, m)
  res_temporal = attention(layer_norm(xt, sd, "temporal_norm1"), sd, "temporal_attn", heads)
  res_temporal = linear(res_temporal.reshape(b, n * t, m), sd, "temporal_fc")
  xt = x[:, 1:] + res_temporal
  # Spatial: the CLS repeated per frame, 'b (h w t) m -> (b t) (h w) m'.
  init_cls = x[:, :1]
  cls = np.repeat(init_cls, t, axis=1).reshape(b * t, 1, m)
  xs = xt.reshape(b, n, t, m).transpose(0, 2, 1, 3).reshape(b * t, n, m)
  res_spatial = attention(layer_norm(np.concatenate([cls, xs], 1), sd, "norm1"), sd, "attn", heads)
  cls = res_spatial[:, 0].reshape(b, t, m).mean(1, keepdims=True)  # averaged over frames
  res = res_spatial[:, 1:].reshape(b, t, n, m).transpose(0, 2, 1, 3).reshape(b, n * t, m)
  x = np.concatenate([init_cls, xt], 1) + np.concatenate([cls, res], 1)
  return x + mlp(layer_norm(x, sd, "norm2"), sd, "mlp", gelu)


# ----------------------------------------------------------------------------- our params as torch weights


def _np(a):
  return np.asarray(a, np.float64)


def torch_linear(sd, name, kernel, bias):
  """A flax Dense (or a DenseGeneral flattened to 2D) as torch `weight [out, in]`, `bias`."""
  sd[f"{name}.weight"], sd[f"{name}.bias"] = _np(kernel).T, _np(bias).reshape(-1)


def torch_norm(sd, name, p):
  sd[f"{name}.weight"], sd[f"{name}.bias"] = _np(p["scale"]), _np(p["bias"])


def torch_attention(sd, name, p):
  """Our `query/key/value` `[D, H, d]` and `out` `[H, d, D]` as timm's fused `qkv` and `proj`."""
  d = p["query"]["kernel"].shape[0]
  kernel = np.concatenate([_np(p[k]["kernel"]).reshape(d, -1) for k in ("query", "key", "value")], 1)
  bias = np.concatenate([_np(p[k]["bias"]).reshape(-1) for k in ("query", "key", "value")])
  torch_linear(sd, f"{name}.qkv", kernel, bias)
  torch_linear(sd, f"{name}.proj", _np(p["out"]["kernel"]).reshape(-1, d), p["out"]["bias"])


def torch_mlp(sd, name, p):
  torch_linear(sd, f"{name}.fc1", p["Dense_0"]["kernel"], p["Dense_0"]["bias"])
  torch_linear(sd, f"{name}.fc2", p["Dense_1"]["kernel"], p["Dense_1"]["bias"])


def timesformer_state(p):
  """One of our divided blocks as a TimeSformer `blocks.i` state dict (without the prefix)."""
  sd = {}
  torch_norm(sd, "temporal_norm1", p["temporal_norm1"])
  torch_attention(sd, "temporal_attn", p["temporal_attn"])
  torch_linear(sd, "temporal_fc", p["temporal_fc"]["kernel"], p["temporal_fc"]["bias"])
  torch_norm(sd, "norm1", p["LayerNorm_0"])
  torch_attention(sd, "attn", p["MultiHeadDotProductAttention_0"])
  torch_norm(sd, "norm2", p["LayerNorm_1"])
  torch_mlp(sd, "mlp", p["MlpBlock_0"])
  return sd


def mlp_state(p):
  """An `MlpBlock` as timm's `Mlp` (`fc1`, `fc2`)."""
  sd = {}
  torch_mlp(sd, "mlp", p)
  return sd


# ----------------------------------------------------------------------------- helpers


def perturb(params, seed=0, scale=0.3):
  """Adds noise to every parameter, so the zero-initialised ones (temporal_fc, heads) matter."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      tree, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def family_config(name, **model):
  """The tiny synthetic config as `name` with dense attention and `(8, 8, 1)` patches."""
  config = tiny_config(model.pop("model_type", "factorized_encoder" if name == "vivit" else "spacetime"),
                      knn=False)
  m = config.model
  m.name = name
  if name != "vivit":
    m.patch_size, m.num_layers = (8, 8, 1), 2
  for k, v in model.items():
    m[k] = v
  config_lib.check_model(m, INPUT)
  return config


def run_captured(config, seed=0, scale=0.3):
  """Builds the model, perturbs its params; returns (params, logits, intermediates)."""
  model = build_model(config.model, num_classes=5)
  x = jax.random.normal(jax.random.key(seed + 1), (2,) + INPUT)
  p = perturb(model.init(jax.random.key(seed), x)["params"], seed + 2, scale)
  (logits, _), state = model.apply({"params": p}, x, capture_intermediates=True,
                                   mutable=["intermediates"])
  return p, np.asarray(logits, np.float64), state["intermediates"]


def output(inter, *path):
  """The captured `__call__` output of the submodule at `path`."""
  for key in path:
    inter = inter[key]
  return _np(inter["__call__"][0])


def assert_mlp_matches(inter, params, path, gelu, other, norm="LayerNorm_1", mlp_name="MlpBlock_0"):
  """The MLP at `path` equals the reference with `gelu` and is further than ATOL from `other`."""
  block = params
  for key in path:
    block = block[key]
  y, got = output(inter, *path, norm), output(inter, *path, mlp_name)
  sd = mlp_state(block[mlp_name])
  np.testing.assert_allclose(got, mlp(y, sd, "mlp", gelu), rtol=0, atol=ATOL)
  assert np.abs(got - mlp(y, sd, "mlp", other)).max() > 10 * ATOL


# ----------------------------------------------------------------------------- tests


def gelu_quick(x):
  """CLIP's QuickGELU: x * sigmoid(1.702 x)."""
  return x / (1.0 + np.exp(-1.702 * x))


@pytest.mark.parametrize("name", ["timesformer", "xvit", "vivit", "student"])
def test_an_override_reaches_every_family_s_mlp(name):
  config = family_config(name, mlp_activation="quick_gelu")
  p, _, inter = run_captured(config)
  assert_mlp_matches(inter, p, ("Transformer", "encoderblock_0") if name != "vivit" else
                     ("SpatialTransformer", "encoderblock_0"), gelu_quick, gelu_erf)


def test_unknown_activation_names_the_field():
  m = family_config("timesformer").model
  m.mlp_activation = "gelu"
  with pytest.raises(ValueError, match=r"model\.mlp_activation"):
    config_lib.check_model(m, INPUT)


def test_cast_keeps_its_experts_activations():
  config = load_config("synthetic_cast")
  shape = (8, 32, 32, 3)
  config_lib.check_model(config.model, shape)
  build_model(config.model, 4)  # empty: each expert keeps its checkpoint's activation
  config.model.mlp_activation = "gelu_exact"
  with pytest.raises(ValueError, match=r"model\.mlp_activation='gelu_exact' cannot take effect"):
    config_lib.check_model(config.model, shape)


def test_timesformer_block_equals_the_original_with_exact_gelu():
  """Block 1 of a default tiny TimeSformer against TimeSformer's `Block.forward` in numpy."""
  config = family_config("timesformer")
  p, _, inter = run_captured(config)
  enc = inter["Transformer"]
  x_in, got = output(enc, "encoderblock_0"), output(enc, "encoderblock_1")
  sd = timesformer_state(p["Transformer"]["encoderblock_1"])
  heads = config.model.num_heads
  want = timesformer_block(x_in, sd, INPUT[0], heads, gelu_erf)
  np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
  # With the tanh GELU the same weights miss the original by far more than the tolerance.
  tanh = timesformer_block(x_in, sd, INPUT[0], heads, gelu_tanh)
  assert np.abs(got - tanh).max() > 10 * ATOL


def test_timesformer_with_the_tanh_override_follows_the_tanh_reference():
  config = family_config("timesformer", mlp_activation="gelu_tanh")
  p, _, inter = run_captured(config)
  enc = inter["Transformer"]
  x_in, got = output(enc, "encoderblock_0"), output(enc, "encoderblock_1")
  sd = timesformer_state(p["Transformer"]["encoderblock_1"])
  heads = config.model.num_heads
  np.testing.assert_allclose(got, timesformer_block(x_in, sd, INPUT[0], heads, gelu_tanh),
                             rtol=0, atol=ATOL)
  assert np.abs(got - timesformer_block(x_in, sd, INPUT[0], heads, gelu_erf)).max() > 10 * ATOL


@pytest.mark.parametrize("attention_type", ["space_only", "joint_space_time"])
def test_timesformer_standard_blocks_use_exact_gelu(attention_type):
  config = family_config("timesformer", attention_type=attention_type)
  p, _, inter = run_captured(config)
  assert_mlp_matches(inter, p, ("Transformer", "encoderblock_1"), gelu_erf, gelu_tanh)


def test_xvit_backbone_and_head_use_exact_gelu():
  """The mixing blocks' MLPs, the head block's MLP and the head's GELU (X-ViT's `VitHead`)."""
  config = family_config("xvit", xvit_div=4)
  p, logits, inter = run_captured(config)
  for layer in range(config.model.num_layers):
    assert_mlp_matches(inter, p, ("Transformer", f"encoderblock_{layer}"), gelu_erf, gelu_tanh)
  assert_mlp_matches(inter, p, ("TemporalTransformer", "encoderblock_0"), gelu_erf, gelu_tanh)
  # mlp_head: LayerNorm (our encoder_norm), Linear, nn.GELU(), Dropout, Linear.
  sd = {}
  torch_linear(sd, "head", p["output_projection"]["kernel"], p["output_projection"]["bias"])
  pre = output(inter, "pre_logits")
  np.testing.assert_allclose(logits, linear(gelu_erf(pre), sd, "head"), rtol=0, atol=ATOL)
  assert np.abs(logits - linear(gelu_tanh(pre), sd, "head")).max() > 10 * ATOL


@pytest.mark.parametrize("model_type", ["factorized_encoder", "spacetime"])
def test_vivit_keeps_scenic_tanh_gelu(model_type):
  config = family_config("vivit", model_type=model_type)
  p, _, inter = run_captured(config)
  encoders = (("SpatialTransformer", "TemporalTransformer") if model_type == "factorized_encoder"
              else ("Transformer",))
  for encoder in encoders:
    assert_mlp_matches(inter, p, (encoder, "encoderblock_0"), gelu_tanh, gelu_erf)


def test_vivit_model_3_block_and_override_reach_the_mlp():
  config = tiny_config("factorized_self_attention_block", knn=False)
  config_lib.check_model(config.model, INPUT)
  p, _, inter = run_captured(config)
  path = ("Transformer", "encoderblock_0")
  assert_mlp_matches(inter, p, path, gelu_tanh, gelu_erf, "LayerNorm_mlp", "MlpBlock")
  config.model.mlp_activation = "gelu_exact"
  p, _, inter = run_captured(config)
  assert_mlp_matches(inter, p, path, gelu_erf, gelu_tanh, "LayerNorm_mlp", "MlpBlock")


def test_student_keeps_tanh_gelu_in_plain_and_mhca_blocks():
  config = family_config("student", patch_size=(8, 8, 2))
  config.model.student.mhca_layers = 1
  p, _, inter = run_captured(config)
  for layer in range(config.model.num_layers):
    assert_mlp_matches(inter, p, ("Transformer", f"encoderblock_{layer}"), gelu_tanh, gelu_erf)
