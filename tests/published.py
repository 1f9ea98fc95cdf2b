"""Tiny checkpoints written in published layouts (original ViT `.npz`, CLIP and VideoMAE
state dicts as `.safetensors`, scenic's flax msgpack), with the expected mapping written
out here by hand, independently of the converters under test; and exporters from our trees
back to the published layouts, the converters' inverses, written out the same way."""

import numpy as np

from vivit_knn.weights.tree import flatten


def _normal(rng, *shape):
  return (0.3 * rng.normal(size=shape)).astype(np.float32)


def vit_jax_arrays(d, heads, mlp, layers, patch, grid, num_classes=0, seed=0):
  """Arrays of a google-research/vision_transformer `.npz` (pre-linen global numbering:
  `LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`)."""
  rng = np.random.default_rng(seed)
  r = lambda *s: _normal(rng, *s)
  hd = d // heads
  a = {"embedding/kernel": r(patch, patch, 3, d), "embedding/bias": r(d), "cls": r(1, 1, d),
       "Transformer/posembed_input/pos_embedding": r(1, 1 + grid * grid, d),
       "Transformer/encoder_norm/scale": r(d), "Transformer/encoder_norm/bias": r(d)}
  for i in range(layers):
    b = f"Transformer/encoderblock_{i}"
    for ln in ("LayerNorm_0", "LayerNorm_2"):
      a[f"{b}/{ln}/scale"], a[f"{b}/{ln}/bias"] = r(d), r(d)
    for part in ("query", "key", "value"):
      a[f"{b}/MultiHeadDotProductAttention_1/{part}/kernel"] = r(d, heads, hd)
      a[f"{b}/MultiHeadDotProductAttention_1/{part}/bias"] = r(heads, hd)
    a[f"{b}/MultiHeadDotProductAttention_1/out/kernel"] = r(heads, hd, d)
    a[f"{b}/MultiHeadDotProductAttention_1/out/bias"] = r(d)
    a[f"{b}/MlpBlock_3/Dense_0/kernel"], a[f"{b}/MlpBlock_3/Dense_0/bias"] = r(d, mlp), r(mlp)
    a[f"{b}/MlpBlock_3/Dense_1/kernel"], a[f"{b}/MlpBlock_3/Dense_1/bias"] = r(mlp, d), r(d)
  if num_classes:
    a["head/kernel"], a["head/bias"] = r(d, num_classes), r(num_classes)
  return a


# Our linen block names <- the npz's globally numbered ones.
VIT_JAX_BLOCK_NAMES = {"LayerNorm_0": "LayerNorm_0",
                       "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
                       "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}


def clip_state_dict(d, heads, mlp, layers, patch, grid, seed=1):
  """An OpenAI-CLIP-layout state dict (image tower `visual.*` plus a text-tower key)."""
  rng = np.random.default_rng(seed)
  r = lambda *s: _normal(rng, *s)
  sd = {"visual.conv1.weight": r(d, 3, patch, patch), "visual.class_embedding": r(d),
        "visual.positional_embedding": r(grid * grid + 1, d),
        "visual.ln_pre.weight": r(d), "visual.ln_pre.bias": r(d),
        "visual.ln_post.weight": r(d), "visual.ln_post.bias": r(d), "visual.proj": r(d, 8),
        "token_embedding.weight": r(10, 8)}
  for i in range(layers):
    b = f"visual.transformer.resblocks.{i}"
    sd[f"{b}.attn.in_proj_weight"], sd[f"{b}.attn.in_proj_bias"] = r(3 * d, d), r(3 * d)
    sd[f"{b}.attn.out_proj.weight"], sd[f"{b}.attn.out_proj.bias"] = r(d, d), r(d)
    for ln in ("ln_1", "ln_2"):
      sd[f"{b}.{ln}.weight"], sd[f"{b}.{ln}.bias"] = r(d), r(d)
    sd[f"{b}.mlp.c_fc.weight"], sd[f"{b}.mlp.c_fc.bias"] = r(mlp, d), r(mlp)
    sd[f"{b}.mlp.c_proj.weight"], sd[f"{b}.mlp.c_proj.bias"] = r(d, mlp), r(d)
  return sd


def videomae_state_dict(d, heads, mlp, layers, patch, tubelet, seed=2):
  """A VideoMAE fine-tuning-layout state dict (q_bias/v_bias, fc_norm, a head)."""
  rng = np.random.default_rng(seed)
  r = lambda *s: _normal(rng, *s)
  sd = {"patch_embed.proj.weight": r(d, 3, tubelet, patch, patch),
        "patch_embed.proj.bias": r(d), "fc_norm.weight": r(d), "fc_norm.bias": r(d),
        "head.weight": r(5, d), "head.bias": r(5)}
  for i in range(layers):
    b = f"blocks.{i}"
    sd[f"{b}.attn.qkv.weight"] = r(3 * d, d)
    sd[f"{b}.attn.q_bias"], sd[f"{b}.attn.v_bias"] = r(d), r(d)
    sd[f"{b}.attn.proj.weight"], sd[f"{b}.attn.proj.bias"] = r(d, d), r(d)
    for ln in ("norm1", "norm2"):
      sd[f"{b}.{ln}.weight"], sd[f"{b}.{ln}.bias"] = r(d), r(d)
    sd[f"{b}.mlp.fc1.weight"], sd[f"{b}.mlp.fc1.bias"] = r(mlp, d), r(mlp)
    sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"] = r(d, mlp), r(d)
  return sd


def expected_clip_expert(sd, heads):
  """Frozen CLIP expert leaves (our names) the state dict must give, written out by hand."""
  d = sd["visual.conv1.weight"].shape[0]
  hd = d // heads
  out = {"conv1/kernel": sd["visual.conv1.weight"].transpose(2, 3, 1, 0),
         "class_embedding": sd["visual.class_embedding"],
         "positional_embedding": sd["visual.positional_embedding"],
         "ln_pre/scale": sd["visual.ln_pre.weight"]}  # ln_post trains in CAST: not listed
  b = "visual.transformer.resblocks.0"
  w, bias = sd[f"{b}.attn.in_proj_weight"], sd[f"{b}.attn.in_proj_bias"]
  for j, part in enumerate(("query", "key", "value")):
    out[f"encoderblock_0/MultiHeadDotProductAttention_0/{part}/kernel"] = (
        w[j * d:(j + 1) * d].T.reshape(d, heads, hd))
    out[f"encoderblock_0/MultiHeadDotProductAttention_0/{part}/bias"] = (
        bias[j * d:(j + 1) * d].reshape(heads, hd))
  out["encoderblock_0/MlpBlock_0/Dense_0/kernel"] = sd[f"{b}.mlp.c_fc.weight"].T
  out["encoderblock_0/LayerNorm_1/scale"] = sd[f"{b}.ln_2.weight"]
  return out


def expected_videomae_expert(sd, heads):
  """Frozen VideoMAE expert leaves (our names) the state dict must give, written out by hand."""
  d = sd["patch_embed.proj.bias"].shape[0]
  hd = d // heads
  out = {"patch_embed/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 4, 1, 0)}
  qkv = sd["blocks.0.attn.qkv.weight"]
  for j, part in enumerate(("query", "key", "value")):
    out[f"encoderblock_0/MultiHeadDotProductAttention_0/{part}/kernel"] = (
        qkv[j * d:(j + 1) * d].T.reshape(d, heads, hd))
  out["encoderblock_0/MultiHeadDotProductAttention_0/query/bias"] = (
      sd["blocks.0.attn.q_bias"].reshape(heads, hd))
  out["encoderblock_0/MultiHeadDotProductAttention_0/key/bias"] = np.zeros((heads, hd), np.float32)
  out["encoderblock_0/MultiHeadDotProductAttention_0/value/bias"] = (
      sd["blocks.0.attn.v_bias"].reshape(heads, hd))
  out["encoderblock_0/MlpBlock_0/Dense_1/kernel"] = sd["blocks.0.mlp.fc2.weight"].T
  return out


def write_scenic_checkpoint(directory, params, step=1000):
  """Writes `params` the way scenic's flax train loop did: `<dir>/checkpoint_<step>`, a
  msgpack train state with the parameters under `optimizer/target`."""
  import os

  from flax import serialization
  state = {"global_step": np.asarray(step), "accum_train_time": np.asarray(0.0),
           "optimizer": {"target": params,
                         "state": {"step": np.asarray(step),
                                   "param_states": {"note": np.zeros((1,), np.float32)}}},
           "model_state": {}, "rng": np.zeros((2,), np.uint32)}
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"checkpoint_{step}")
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(state))
  return path


_QKV = ("query", "key", "value")


def fuse_qkv(flat, prefix=""):
  """Our `<prefix>/{query,key,value}/{kernel,bias}` -> torch's fused `(weight [3 D', D],
  bias [3 D'])`, rows ordered `[query | key | value]`."""
  base = f"{prefix}/" if prefix else ""
  kernels = [flat[f"{base}{part}/kernel"] for part in _QKV]
  weight = np.concatenate([np.reshape(k, (k.shape[0], -1)).T for k in kernels])
  bias = np.concatenate([np.reshape(flat[f"{base}{part}/bias"], -1) for part in _QKV])
  return weight, bias


def fuse_out(kernel):
  """Our `out/kernel` `[heads, head_dim, D]` -> the torch output projection weight `[D, D']`."""
  return np.reshape(kernel, (-1, kernel.shape[-1])).T


def _block_indices(flat):
  return sorted({int(k.split("/")[0].split("_")[1]) for k in flat
                 if k.startswith("encoderblock_")})


def export_clip(tree):
  """A `CLIPVisionExpert` tree -> OpenAI CLIP `visual.*` state-dict arrays (no `visual.proj`)."""
  flat = flatten(tree)
  out = {"conv1.weight": flat["conv1/kernel"].transpose(3, 2, 0, 1),
         "class_embedding": flat["class_embedding"],
         "positional_embedding": flat["positional_embedding"]}
  for ln in ("ln_pre", "ln_post"):
    out[f"{ln}.weight"], out[f"{ln}.bias"] = flat[f"{ln}/scale"], flat[f"{ln}/bias"]
  for i in _block_indices(flat):
    src, name = f"encoderblock_{i}", f"transformer.resblocks.{i}"
    for theirs, ours in (("ln_1", "LayerNorm_0"), ("ln_2", "LayerNorm_1")):
      out[f"{name}.{theirs}.weight"] = flat[f"{src}/{ours}/scale"]
      out[f"{name}.{theirs}.bias"] = flat[f"{src}/{ours}/bias"]
    for theirs, ours in (("mlp.c_fc", "Dense_0"), ("mlp.c_proj", "Dense_1")):
      out[f"{name}.{theirs}.weight"] = flat[f"{src}/MlpBlock_0/{ours}/kernel"].T
      out[f"{name}.{theirs}.bias"] = flat[f"{src}/MlpBlock_0/{ours}/bias"]
    attn = f"{src}/MultiHeadDotProductAttention_0"
    out[f"{name}.attn.in_proj_weight"], out[f"{name}.attn.in_proj_bias"] = fuse_qkv(flat, attn)
    out[f"{name}.attn.out_proj.weight"] = fuse_out(flat[f"{attn}/out/kernel"])
    out[f"{name}.attn.out_proj.bias"] = flat[f"{attn}/out/bias"]
  return {"visual." + k: np.asarray(v) for k, v in out.items()}


def export_videomae(tree):
  """A `VideoMAEExpert` tree -> VideoMAE state-dict arrays (q/v-bias form; the key bias must be
  zero, as VideoMAE's attention has none)."""
  flat = flatten(tree)
  out = {"patch_embed.proj.weight": flat["patch_embed/kernel"].transpose(4, 3, 0, 1, 2),
         "patch_embed.proj.bias": flat["patch_embed/bias"]}
  if "fc_norm/scale" in flat:
    out["fc_norm.weight"], out["fc_norm.bias"] = flat["fc_norm/scale"], flat["fc_norm/bias"]
  for i in _block_indices(flat):
    src, name = f"encoderblock_{i}", f"blocks.{i}"
    for theirs, ours in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
      out[f"{name}.{theirs}.weight"] = flat[f"{src}/{ours}/scale"]
      out[f"{name}.{theirs}.bias"] = flat[f"{src}/{ours}/bias"]
    for theirs, ours in (("mlp.fc1", "Dense_0"), ("mlp.fc2", "Dense_1")):
      out[f"{name}.{theirs}.weight"] = flat[f"{src}/MlpBlock_0/{ours}/kernel"].T
      out[f"{name}.{theirs}.bias"] = flat[f"{src}/MlpBlock_0/{ours}/bias"]
    attn = f"{src}/MultiHeadDotProductAttention_0"
    assert not np.any(flat[f"{attn}/key/bias"]), f"{attn}/key/bias is not zero"
    weight, bias = fuse_qkv(flat, attn)
    q_bias, _, v_bias = np.split(bias, 3)
    out[f"{name}.attn.qkv.weight"] = weight
    out[f"{name}.attn.q_bias"], out[f"{name}.attn.v_bias"] = q_bias, v_bias
    out[f"{name}.attn.proj.weight"] = fuse_out(flat[f"{attn}/out/kernel"])
    out[f"{name}.attn.proj.bias"] = flat[f"{attn}/out/bias"]
  return {k: np.asarray(v) for k, v in out.items()}


def to_torchvision(variables):
  """`ResNet` variables (`params`, `batch_stats`) -> a torchvision state dict (float32, without
  `num_batches_tracked`)."""
  norm_leaves = {("params", "scale"): "weight", ("params", "bias"): "bias",
                 ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
  modules = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
  state = {}
  for collection in ("params", "batch_stats"):
    for path, value in flatten(variables.get(collection, {})).items():
      *names, leaf = path.split("/")
      prefix = ""
      if names[0].startswith("layer"):  # layer<stage>_<block>
        stage, index = names[0][len("layer"):].split("_")
        prefix, names = f"layer{stage}.{index}.", names[1:]
      module = modules.get(names[0], names[0])
      if leaf == "kernel":
        value = value.T if module == "fc" else value.transpose(3, 2, 0, 1)
        leaf = "weight"
      elif module != "fc":
        leaf = norm_leaves[(collection, leaf)]
      state[f"{prefix}{module}.{leaf}"] = np.asarray(value, np.float32)
  return state
