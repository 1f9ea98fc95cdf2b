"""Every checkpoint format users hold, written here in its real layout and read back exactly.

Covers the npz prefixes and bf16 arrays of training files, VideoMAE training files
with their `args` Namespace, `.safetensors` state dicts (no torch), scenic/flax
msgpack checkpoints, TorchScript archives (read without running them), the errors
of `load_checkpoint`, and the `convert` CLI.
"""

import argparse
import collections
import os
import pickle
import warnings
import zipfile

import flax
import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from tests.test_cast_weights import (CLIP_LAYERS, CLIP_WIDTH, VMAE_LAYERS, VMAE_WIDTH,
                                     _clip_state, _videomae_state)
from tests.test_weights import (ARCH, _big_vision_flat, assert_same_tree, pre_linen_names,
                                random_image_tree)
from tests.test_weights_timm import to_timm_state
from tests.tiny import run_python
from tests.torch_util import require_torch
from vivit_knn.weights import clip, formats, npz, scenic, torchvision_resnet
from vivit_knn.weights.load import load_checkpoint, load_orbax
from vivit_knn.weights.tree import CheckpointFormatError, flatten

RNG = np.random.default_rng(7)


# ----------------------------------------------------------------------------- expectations


def _big_vision_expected(flat):
  """Our image tree from a (non-scanned) big_vision flat dict: the CLS row of pos-emb is 0."""
  out = {k: v for k, v in flat.items() if k != "pos_embedding"}
  pos = flat["pos_embedding"]
  out["Transformer/posembed_input/pos_embedding"] = np.concatenate(
      [np.zeros((1, 1, pos.shape[-1]), pos.dtype), pos], axis=1)
  return out


def _assert_flat_equal(got, want):
  got = flatten(got)
  assert set(got) == set(want), (sorted(set(got) ^ set(want)))
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert got[key].dtype == np.float32, key


def _expected_clip(sd, heads=CLIP_WIDTH // 64):
  """The CLIPVisionExpert flat tree of a CLIP state dict, spelled out (float32)."""
  v = {k[len("visual."):]: np.asarray(a, np.float32) for k, a in sd.items()
       if k.startswith("visual.")}
  d = v["conv1.weight"].shape[0]
  hd = d // heads
  out = {"conv1/kernel": v["conv1.weight"].transpose(2, 3, 1, 0),
         "class_embedding": v["class_embedding"],
         "positional_embedding": v["positional_embedding"]}
  for name in ("ln_pre", "ln_post"):
    out[f"{name}/scale"], out[f"{name}/bias"] = v[f"{name}.weight"], v[f"{name}.bias"]
  for i in range(CLIP_LAYERS):
    b, o = f"transformer.resblocks.{i}.", f"encoderblock_{i}/"
    for theirs, ours in (("ln_1", "LayerNorm_0"), ("ln_2", "LayerNorm_1")):
      out[o + ours + "/scale"] = v[b + theirs + ".weight"]
      out[o + ours + "/bias"] = v[b + theirs + ".bias"]
    for theirs, ours in (("c_fc", "Dense_0"), ("c_proj", "Dense_1")):
      out[o + f"MlpBlock_0/{ours}/kernel"] = v[b + f"mlp.{theirs}.weight"].T
      out[o + f"MlpBlock_0/{ours}/bias"] = v[b + f"mlp.{theirs}.bias"]
    w, bias = v[b + "attn.in_proj_weight"], v[b + "attn.in_proj_bias"]
    a = o + "MultiHeadDotProductAttention_0/"
    for j, part in enumerate(("query", "key", "value")):
      out[a + part + "/kernel"] = w[j * d:(j + 1) * d].T.reshape(d, heads, hd)
      out[a + part + "/bias"] = bias[j * d:(j + 1) * d].reshape(heads, hd)
    out[a + "out/kernel"] = v[b + "attn.out_proj.weight"].T.reshape(heads, hd, d)
    out[a + "out/bias"] = v[b + "attn.out_proj.bias"]
  return out


def _expected_videomae(sd, prefix="encoder.", heads=VMAE_WIDTH // 64):
  """The VideoMAEExpert flat tree of a VideoMAE state dict, spelled out (float32)."""
  v = {k[len(prefix):]: np.asarray(a, np.float32) for k, a in sd.items() if k.startswith(prefix)}
  d = v["patch_embed.proj.weight"].shape[0]
  hd = d // heads
  out = {"patch_embed/kernel": v["patch_embed.proj.weight"].transpose(2, 3, 4, 1, 0),
         "patch_embed/bias": v["patch_embed.proj.bias"],
         "fc_norm/scale": v["fc_norm.weight"], "fc_norm/bias": v["fc_norm.bias"]}
  for i in range(VMAE_LAYERS):
    b, o = f"blocks.{i}.", f"encoderblock_{i}/"
    for theirs, ours in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
      out[o + ours + "/scale"] = v[b + theirs + ".weight"]
      out[o + ours + "/bias"] = v[b + theirs + ".bias"]
    for theirs, ours in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
      out[o + f"MlpBlock_0/{ours}/kernel"] = v[b + f"mlp.{theirs}.weight"].T
      out[o + f"MlpBlock_0/{ours}/bias"] = v[b + f"mlp.{theirs}.bias"]
    w = v[b + "attn.qkv.weight"]
    a = o + "MultiHeadDotProductAttention_0/"
    biases = (v[b + "attn.q_bias"], np.zeros(d, np.float32), v[b + "attn.v_bias"])
    for j, part in enumerate(("query", "key", "value")):
      out[a + part + "/kernel"] = w[j * d:(j + 1) * d].T.reshape(d, heads, hd)
      out[a + part + "/bias"] = biases[j].reshape(heads, hd)
    out[a + "out/kernel"] = v[b + "attn.proj.weight"].T.reshape(heads, hd, d)
    out[a + "out/bias"] = v[b + "attn.proj.bias"]
  return out


def _assert_one_line_naming(message, *parts):
  assert "\n" not in message, message
  assert "Traceback" not in message
  for part in parts:
    assert part in message, (part, message)


# ----------------------------------------------------------------------------- npz


@pytest.mark.parametrize("prefix", ["", "opt/target/"])
def test_vit_npz_with_training_prefix(tmp_path, prefix):
  tree = random_image_tree(seed=4)
  flat = {prefix + k: v for k, v in pre_linen_names(flatten(tree)).items()}
  if prefix:  # the optimizer state beside the parameters in an old vit_jax training file
    flat["opt/state/step"] = np.array(1200)
    flat["opt/state/param_states/cls/grad_ema"] = np.zeros((1, 1, 16), np.float32)
  path = str(tmp_path / "vit.npz")
  np.savez(path, **flat)
  assert_same_tree(load_checkpoint(path, "vit_npz"), tree)


@pytest.mark.parametrize("prefix", ["params/", "params/img/"])
def test_big_vision_npz_with_training_or_two_tower_prefix(tmp_path, prefix):
  flat = _big_vision_flat(seed=5)
  stored = {prefix + k: v for k, v in flat.items()}
  stored["opt/1/mu/pos_embedding"] = np.ones_like(flat["pos_embedding"])  # optax state
  if prefix == "params/img/":  # SigLIP/LiT: the text tower and the logit scale and bias
    stored["params/txt/Embed_0/embedding"] = RNG.normal(size=(10, 16)).astype(np.float32)
    stored["params/txt/embedding/kernel"] = RNG.normal(size=(4, 16)).astype(np.float32)
    stored["params/t"] = np.array([2.3], np.float32)
    stored["params/b"] = np.array([-10.0], np.float32)
  path = str(tmp_path / "checkpoint.npz")
  np.savez(path, **stored)
  _assert_flat_equal(load_checkpoint(path, "big_vision_npz"), _big_vision_expected(flat))


def test_unknown_npz_prefix_is_named(tmp_path):
  flat = {"foo/bar/" + k: v for k, v in pre_linen_names(flatten(random_image_tree())).items()}
  path = str(tmp_path / "odd.npz")
  np.savez(path, **flat)
  with pytest.raises(CheckpointFormatError) as err:
    load_checkpoint(path, "vit_npz")
  _assert_one_line_naming(str(err.value), "init_from.checkpoint_path", path, "'vit_npz'",
                          "'foo/bar/'", "opt/target/", "params/img/")


def test_big_vision_bfloat16_npz_is_read_as_float32(tmp_path):
  flat = _big_vision_flat(seed=6)
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in flat.items()}
  path = str(tmp_path / "checkpoint.npz")
  np.savez(path, **{"params/" + k: v for k, v in bf16.items()})
  with np.load(path, allow_pickle=False) as data:  # numpy has no bf16: raw 2-byte void
    assert data["params/cls"].dtype.str == "|V2"
  want = _big_vision_expected({k: v.astype(np.float32) for k, v in bf16.items()})
  _assert_flat_equal(load_checkpoint(path, "big_vision_npz"), want)


def test_bfloat16_bits_widen_exactly():
  values = np.array([0.0, -0.0, 1.0, -2.5, 3.140625, 1e-30, np.inf, -np.inf], np.float32)
  bits = values.astype(ml_dtypes.bfloat16).view(np.uint16)
  np.testing.assert_array_equal(npz.bfloat16_to_float32(bits.view("V2")),
                                values.astype(ml_dtypes.bfloat16).astype(np.float32))


# ----------------------------------------------------------------------------- errors


def test_missing_path_and_unknown_format_name_the_field(tmp_path):
  missing = str(tmp_path / "nope.npz")
  with pytest.raises(FileNotFoundError) as err:
    load_checkpoint(missing, "vit_npz")
  assert str(err.value) == f"init_from.checkpoint_path={missing} does not exist"
  with pytest.raises(FileNotFoundError) as err:
    load_checkpoint(missing, "clip", field="init_from.spatial_expert")
  assert str(err.value) == f"init_from.spatial_expert.checkpoint_path={missing} does not exist"
  with pytest.raises(ValueError) as err:
    load_checkpoint(missing, "pickle")
  _assert_one_line_naming(str(err.value), "init_from.checkpoint_format", "'pickle'", "vit_npz",
                          "scenic", "clip", "videomae")


@pytest.mark.parametrize("fmt,name", [
    ("vit_npz", "weights.npz"), ("big_vision_npz", "weights.npz"), ("scenic", "checkpoint_3"),
    ("orbax", "weights"), ("timm", "model.safetensors"), ("clip", "clip.safetensors"),
    ("videomae", "videomae.safetensors")])
def test_text_file_is_not_a_checkpoint(tmp_path, fmt, name):
  path = str(tmp_path / name)
  with open(path, "w") as f:
    f.write("these are not weights\n")
  with pytest.raises(CheckpointFormatError) as err:
    load_checkpoint(path, fmt, field="init_from.temporal_expert")
  message = str(err.value)
  _assert_one_line_naming(message, "init_from.temporal_expert.checkpoint_path", path, f"'{fmt}'")
  assert "pickled" not in message and "allow_pickle" not in message


def test_npz_that_is_a_plain_zip_or_npy_is_refused(tmp_path):
  path = str(tmp_path / "archive.npz")
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("readme.txt", "hello")
  with pytest.raises(CheckpointFormatError) as err:
    load_checkpoint(path, "vit_npz")
  _assert_one_line_naming(str(err.value), "init_from.checkpoint_path", path, "'vit_npz'")
  single = str(tmp_path / "single.npz")
  with open(single, "wb") as f:
    np.save(f, np.zeros(3))
  with pytest.raises(CheckpointFormatError, match="single .npy array"):
    load_checkpoint(single, "big_vision_npz")


def test_zip_that_is_not_a_torch_file_is_refused(tmp_path):
  require_torch()
  path = str(tmp_path / "vit.pth")
  np.savez(path, x=np.zeros(3))  # a zip file, but not what torch.save writes
  os.replace(path + ".npz", path)
  with pytest.raises(CheckpointFormatError) as err:
    load_checkpoint(path, "timm", num_heads=2)
  _assert_one_line_naming(str(err.value), "init_from.checkpoint_path", path, "'timm'",
                          "torch.save")


# ----------------------------------------------------------------------------- torch files


def test_videomae_training_checkpoint_with_args_namespace(tmp_path):
  torch = require_torch()
  sd = _videomae_state(prefix="")  # a fine-tuning checkpoint: no `encoder.` prefix
  args = argparse.Namespace(model="vit_small_patch16_224", input_size=16, num_frames=4,
                            tubelet_size=2, lr=1e-3, opt_betas=[0.9, 0.999], data_path="/k400",
                            finetune="", use_mean_pooling=True, seed=0)
  path = str(tmp_path / "checkpoint-best.pth")
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()},
              "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
              "epoch": 29, "scaler": {"scale": 65536.0, "growth_factor": 2.0},
              "args": args}, path)
  tree = load_checkpoint(path, "videomae", field="init_from.temporal_expert")
  _assert_flat_equal(tree, _expected_videomae(sd, prefix=""))


def _touch(path):
  with open(path, "w") as f:
    f.write("ran")
  return path


class SideEffect:
  """An object whose unpickling writes `self.marker` (it must never be unpickled)."""

  def __init__(self, marker):
    self.marker = marker

  def __setstate__(self, state):
    _touch(state["marker"])


class ReducesToCall:
  """Pickles as a call of `_touch(marker)`."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (_touch, (self.marker,))


@pytest.mark.parametrize("payload,named", [(SideEffect, "SideEffect"), (ReducesToCall, "_touch")])
def test_torch_file_with_other_objects_is_refused_without_running_them(tmp_path, payload, named):
  torch = require_torch()
  marker = str(tmp_path / "marker")
  sd = _videomae_state()
  path = str(tmp_path / "videomae.pth")
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()},
              "extra": payload(marker)}, path)
  assert not os.path.exists(marker)
  with pytest.raises(CheckpointFormatError) as err:
    load_checkpoint(path, "videomae", field="init_from.temporal_expert")
  _assert_one_line_naming(str(err.value), "init_from.temporal_expert.checkpoint_path", path,
                          "'videomae'", named)
  assert not os.path.exists(marker)


# ----------------------------------------------------------------------------- safetensors


def test_timm_safetensors_without_torch(tmp_path):
  tree = random_image_tree(seed=8)
  sd = {k: np.ascontiguousarray(v) for k, v in to_timm_state(tree).items()}
  path = str(tmp_path / "model.safetensors")
  safetensors.numpy.save_file(sd, path)
  assert_same_tree(load_checkpoint(path, "timm", num_heads=ARCH.num_heads), tree)


def test_clip_fp16_safetensors_without_torch(tmp_path):
  sd = {k: v.astype(np.float16) for k, v in _clip_state().items()}  # OpenAI's release is fp16
  path = str(tmp_path / "clip.safetensors")
  safetensors.numpy.save_file(sd, path)
  tree = load_checkpoint(path, "clip", field="init_from.spatial_expert")
  _assert_flat_equal(tree, _expected_clip(sd))


def test_videomae_safetensors_without_torch(tmp_path):
  sd = _videomae_state()
  path = str(tmp_path / "videomae.safetensors")
  safetensors.numpy.save_file(sd, path)
  _assert_flat_equal(load_checkpoint(path, "videomae"), _expected_videomae(sd))


def test_torchvision_safetensors_and_npz_without_torch(tmp_path):
  sd = {"conv1.weight": RNG.normal(size=(4, 3, 7, 7)).astype(np.float32),
        "bn1.running_mean": RNG.normal(size=4).astype(np.float32),
        "fc.weight": RNG.normal(size=(5, 4)).astype(np.float32)}
  for name, save in (("resnet.safetensors", safetensors.numpy.save_file),
                     ("resnet.npz", lambda d, p: np.savez(p, **d))):
    path = str(tmp_path / name)
    save(sd, path)
    got = torchvision_resnet.load_state_dict(path)
    assert set(got) == set(sd)
    for key, value in sd.items():
      np.testing.assert_array_equal(got[key], value, err_msg=key)


# ----------------------------------------------------------------------------- scenic


def _scenic_params(seed=0):
  """A tiny ViViT factorised-encoder tree in scenic's names (random values)."""
  rng = np.random.default_rng(seed)
  r = lambda *s: rng.normal(size=s).astype(np.float32)
  block = lambda: {"LayerNorm_0": {"scale": r(16), "bias": r(16)},
                   "MultiHeadDotProductAttention_0": {
                       **{p: {"kernel": r(16, 2, 8), "bias": r(2, 8)}
                          for p in ("query", "key", "value")},
                       "out": {"kernel": r(2, 8, 16), "bias": r(16)}},
                   "LayerNorm_1": {"scale": r(16), "bias": r(16)},
                   "MlpBlock_0": {"Dense_0": {"kernel": r(16, 32), "bias": r(32)},
                                  "Dense_1": {"kernel": r(32, 16), "bias": r(16)}}}
  encoder = lambda n: {"posembed_input": {"pos_embedding": r(1, n, 16)},
                       "encoderblock_0": block(), "encoderblock_1": block(),
                       "encoder_norm": {"scale": r(16), "bias": r(16)}}
  return {"embedding": {"kernel": r(2, 8, 8, 3, 16), "bias": r(16)},
          "cls_SpatialTransformer": r(1, 1, 16), "cls_TemporalTransformer": r(1, 1, 16),
          "SpatialTransformer": encoder(5), "TemporalTransformer": encoder(3),
          "output_projection": {"kernel": r(16, 5), "bias": r(5)}}


@flax.struct.dataclass
class OldScenicTrainState:
  """scenic's TrainState before optax (flax.optim): params under optimizer/target."""

  global_step: int = 0
  optimizer: dict = None
  model_state: dict = None
  rng: np.ndarray = None
  accum_train_time: int = 0


@flax.struct.dataclass
class ScenicTrainState:
  """scenic's current TrainState (optax): params at the top."""

  opt_state: dict = None
  params: dict = None
  global_step: int = 0
  model_state: dict = None
  rng: np.ndarray = None
  metadata: dict = None


def _old_state(params, step):
  moments = jax.tree.map(np.zeros_like, params)
  return OldScenicTrainState(
      global_step=step, optimizer={"target": params, "state": {"step": step,
                                                              "param_states": moments}},
      model_state={}, rng=np.array([0, 42], np.uint32), accum_train_time=12)


def _save_flax(workdir, state, step, use_orbax=False):
  """`flax.training.checkpoints.save_checkpoint`, as scenic calls it (msgpack unless use_orbax)."""
  from flax.training import checkpoints  # pylint: disable=import-outside-toplevel
  previous = flax.config.flax_use_orbax_checkpointing
  flax.config.update("flax_use_orbax_checkpointing", use_orbax)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      return checkpoints.save_checkpoint(str(workdir), state, step, keep=5)
  finally:
    flax.config.update("flax_use_orbax_checkpointing", previous)


def test_scenic_old_layout_newest_step_in_workdir(tmp_path):
  old, new = _scenic_params(seed=1), _scenic_params(seed=2)
  _save_flax(tmp_path, _old_state(old, 2), 2)
  path = _save_flax(tmp_path, _old_state(new, 10), 10)
  assert os.path.isfile(path) and os.path.basename(path) == "checkpoint_10"
  _assert_flat_equal(load_checkpoint(str(tmp_path), "scenic"), flatten(new))
  _assert_flat_equal(load_checkpoint(str(tmp_path / "checkpoint_2"), "scenic"), flatten(old))


def test_scenic_optax_layout_bf16_file(tmp_path):
  params = _scenic_params(seed=3)
  bf16 = jax.tree.map(lambda a: a.astype(ml_dtypes.bfloat16), params)
  state = ScenicTrainState(opt_state={"mu": jax.tree.map(np.zeros_like, params), "count": 7},
                           params=bf16, global_step=7, model_state={},
                           rng=np.array([0, 1], np.uint32), metadata={"chrono": {"t": 1.5}})
  path = _save_flax(tmp_path, state, 7)
  want = {k: v.astype(np.float32) for k, v in flatten(bf16).items()}
  _assert_flat_equal(load_checkpoint(path, "scenic"), want)


def test_scenic_bare_checkpoint_file_and_orbax_backed_directory(tmp_path):
  params = _scenic_params(seed=4)
  bare = tmp_path / "bare"
  bare.mkdir()
  (bare / "checkpoint").write_bytes(flax.serialization.to_bytes(_old_state(params, 1)))
  _assert_flat_equal(load_checkpoint(str(bare), "scenic"), flatten(params))
  # Recent flax writes the same train state with Orbax: a directory checkpoint_<step>.
  state = ScenicTrainState(opt_state={"count": 3}, params=params, global_step=3,
                           model_state={}, rng=np.array([0, 1], np.uint32), metadata={"a": 1})
  _save_flax(tmp_path / "orbax", state, 3, use_orbax=True)
  assert os.path.isdir(tmp_path / "orbax" / "checkpoint_3")
  _assert_flat_equal(load_checkpoint(str(tmp_path / "orbax"), "scenic"), flatten(params))


def test_scenic_state_without_params_is_refused(tmp_path):
  path = tmp_path / "checkpoint_1"
  path.write_bytes(flax.serialization.msgpack_serialize({"global_step": 1, "rng": np.zeros(2)}))
  with pytest.raises(CheckpointFormatError) as err:
    load_checkpoint(str(path), "scenic")
  _assert_one_line_naming(str(err.value), str(path), "'scenic'", "optimizer/target", "params")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(CheckpointFormatError, match="checkpoint_<step>"):
    scenic.load_scenic(str(empty))


# ----------------------------------------------------------------------------- TorchScript


class RunsShell:
  """Pickles as `os.system(command)`."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_torchscript_archive_with_code_in_its_pickle_is_refused_unrun(tmp_path, protocol):
  marker = tmp_path / "marker"
  path = str(tmp_path / "ViT-B-16.pt")
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/version", "3\n")
    archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
    archive.writestr("archive/data.pkl",
                     pickle.dumps(RunsShell(f"touch {marker}"), protocol=protocol))
  with pytest.raises(CheckpointFormatError) as err:
    load_checkpoint(path, "clip", field="init_from.spatial_expert")
  _assert_one_line_naming(str(err.value), "init_from.spatial_expert.checkpoint_path", path,
                          "'clip'", "system")
  assert not marker.exists()


def _scripted_clip(torch, sd):
  """An OpenAI-CLIP-shaped TorchScript module (fp16) holding the arrays of `sd`."""
  nn = torch.nn
  d = CLIP_WIDTH

  class QuickGELU(nn.Module):
    def forward(self, x):
      return x * torch.sigmoid(1.702 * x)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.attn = nn.MultiheadAttention(d, d // 64)
      self.ln_1 = nn.LayerNorm(d)
      self.mlp = nn.Sequential(collections.OrderedDict(
          [("c_fc", nn.Linear(d, 4 * d)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * d, d))]))
      self.ln_2 = nn.LayerNorm(d)

    def forward(self, x):
      return x + self.mlp(self.ln_2(x))

  class Transformer(nn.Module):
    def __init__(self):
      super().__init__()
      self.width = d
      self.resblocks = nn.Sequential(*[Block() for _ in range(CLIP_LAYERS)])

    def forward(self, x):
      return self.resblocks(x)

  class Visual(nn.Module):
    def __init__(self):
      super().__init__()
      self.input_resolution = 16
      self.conv1 = nn.Conv2d(3, d, 8, 8, bias=False)
      self.class_embedding = nn.Parameter(torch.zeros(d))
      self.positional_embedding = nn.Parameter(torch.zeros(5, d))
      self.ln_pre = nn.LayerNorm(d)
      self.transformer = Transformer()
      self.ln_post = nn.LayerNorm(d)
      self.proj = nn.Parameter(torch.zeros(d, 32))

    def forward(self, x):
      return self.ln_post(self.transformer(self.ln_pre(x))) @ self.proj

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.visual = Visual()
      self.positional_embedding = nn.Parameter(torch.zeros(77, 64))
      self.token_embedding = nn.Embedding(10, 64)
      self.logit_scale = nn.Parameter(torch.zeros(1))

    def forward(self, x):
      return self.visual(x) * self.logit_scale.exp()

  model = Model()
  own = {k: torch.from_numpy(v) for k, v in sd.items()
         if not k.startswith("transformer.")}  # the text transformer is left out here
  model.load_state_dict(own, strict=True)
  return torch.jit.script(model.half().eval())


def test_torchscript_clip_archive_is_read_exactly(tmp_path, monkeypatch):
  torch = require_torch()
  sd = {k: v for k, v in _clip_state().items() if not k.startswith("transformer.")}
  scripted = _scripted_clip(torch, sd)
  path = str(tmp_path / "ViT-B-16.pt")
  torch.jit.save(scripted, path)
  want = {k: v.float().numpy() for k, v in scripted.state_dict().items()}

  def refuse(*args, **kwargs):
    raise AssertionError("torch.jit.load runs the archive's code")

  monkeypatch.setattr(torch.jit, "load", refuse)
  got = clip.load_clip_state_dict(path)
  assert set(got) == set(want)
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  fp16 = {k: v.astype(np.float16) for k, v in sd.items()}
  _assert_flat_equal(load_checkpoint(path, "clip"), _expected_clip(fp16))


# ----------------------------------------------------------------------------- convert CLI


def _convert(*args, check=True):
  return run_python(["-m", "vivit_knn.weights.convert", *args], timeout=120, check=check)


def test_cli_converts_clip_and_refuses_an_existing_folder(tmp_path):
  sd = _clip_state()
  src, dst = str(tmp_path / "clip.safetensors"), str(tmp_path / "clip.orbax")
  safetensors.numpy.save_file(sd, src)
  _convert(f"--from={src}", "--format=clip", f"--to={dst}")
  _assert_flat_equal(load_orbax(dst), _expected_clip(sd))

  other = _videomae_state()
  src2 = str(tmp_path / "videomae.safetensors")
  safetensors.numpy.save_file(other, src2)
  proc = _convert(f"--from={src2}", "--format=videomae", f"--to={dst}", check=False)
  assert proc.returncode == 2
  err = proc.stderr.strip().splitlines()
  assert err == [f"error: --to={dst} already exists; pass --overwrite to replace it"], proc.stderr
  _assert_flat_equal(load_orbax(dst), _expected_clip(sd))  # untouched

  _convert(f"--from={src2}", "--format=videomae", f"--to={dst}", "--overwrite")
  _assert_flat_equal(load_orbax(dst), _expected_videomae(other))
  assert sorted(os.listdir(tmp_path)) == ["clip.orbax", "clip.safetensors", "videomae.safetensors"]


def test_cli_converts_a_scenic_workdir(tmp_path):
  params = _scenic_params(seed=5)
  workdir = tmp_path / "workdir"
  _save_flax(workdir, _old_state(params, 4), 4)
  dst = str(tmp_path / "vivit.orbax")
  proc = _convert(f"--from={workdir}", "--format=scenic", f"--to={dst}")
  assert "wrote" in proc.stdout
  _assert_flat_equal(load_orbax(dst), flatten(params))


@pytest.mark.parametrize("args,expected", [
    (["--from={tmp}/none.npz", "--format=vit_npz"], "error: --from={tmp}/none.npz does not exist"),
    (["--from={tmp}/text.npz", "--format=vit_npz"],
     "error: --from={tmp}/text.npz cannot be read as 'vit_npz': not an .npz archive"),
    (["--from={tmp}/text.npz", "--format=pickle"], "error: --format must be one of"),
    (["--format=vit_npz"], "error: --from is required"),
    (["--from={tmp}/text.npz", "--format=timm", "--num_heads=two"], "error: "),
])
def test_cli_errors_are_one_line_with_status_2(tmp_path, args, expected):
  (tmp_path / "text.npz").write_text("not weights")
  args = [a.format(tmp=tmp_path) for a in args] + [f"--to={tmp_path}/out"]
  proc = _convert(*args, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(expected.format(tmp=tmp_path)), proc.stderr
  assert not os.path.exists(tmp_path / "out")


def test_format_names():
  assert formats.MODEL_FORMATS == ("orbax", "vit_npz", "big_vision_npz", "timm", "scenic")
  assert formats.SPATIAL_EXPERT_FORMATS == ("clip", "orbax")
  assert formats.TEMPORAL_EXPERT_FORMATS == ("videomae", "orbax")
  assert set(formats.LOADABLE_FORMATS) == set(formats.MODEL_FORMATS) | {"clip", "videomae"}
