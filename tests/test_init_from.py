"""Initialising video models from an image ViT: kernels, position embeddings, copies, identity."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import tiny_config
from vivit_knn.models.registry import build_model
from vivit_knn.weights import inflate
from vivit_knn.weights.image_vit import ImageViT, ImageViTArch
from vivit_knn.weights.init_from import initialise_with_report
from vivit_knn.weights.load import load_checkpoint, save_orbax
from vivit_knn.weights.tree import UnmatchedKeysError, flatten

INPUT = (4, 24, 24, 3)  # tiny_config: 4 frames of 24x24, 8x8 patches -> a 3x3 grid
ARCH = ImageViTArch(patch_size=(8, 8), hidden_size=16, num_heads=2, mlp_dim=32, num_layers=2,
                    num_classes=7)


def initialise_from_tree(params, source, config):
  """`params` with the parts of `source` (a tree in our naming) placed into it."""
  return initialise_with_report(params, source, config)[0]


def initialise_from(params, config):
  """`params` with the parts the file `config.init_from.checkpoint_path` provides (as a run's
  first state gets them); unchanged when no file is set."""
  init = config.init_from
  if not init.checkpoint_path:
    return params
  source = load_checkpoint(init.checkpoint_path, init.checkpoint_format,
                           num_heads=config.model.num_heads)
  return initialise_from_tree(params, source, config)


def image_tree(image_size=24, arch=ARCH, seed=0):
  """A random image ViT tree (every array random, so a wrong copy shows)."""
  images = jnp.zeros((1, image_size, image_size, 3))
  shapes = jax.eval_shape(lambda: ImageViT(arch).init(jax.random.key(0), images))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def video_config(name="vivit", model_type="spacetime", **model):
  config = tiny_config(model_type, knn=False)
  config.model.name = name
  if name != "vivit":
    config.model.patch_size = (8, 8, 1)
    config.model.classifier = "token"
    config.model.xvit_div = 4
  for k, v in model.items():
    config.model[k] = v
  return config


def fresh(config, seed=1):
  model = build_model(config.model, num_classes=5)
  x = jnp.zeros((1,) + INPUT)
  return model, jax.tree.map(np.asarray, model.init(jax.random.key(seed), x)["params"])


# ----------------------------------------------------------------------------- array surgery


@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_central_frame_inflation_puts_the_2d_kernel_in_the_middle_slice(t):
  k2 = np.random.default_rng(0).normal(size=(8, 8, 3, 16)).astype(np.float32)
  k3 = inflate.inflate_kernel(k2, t, "central_frame_initializer")
  assert k3.shape == (t, 8, 8, 3, 16)
  np.testing.assert_array_equal(k3[t // 2], k2)
  assert not np.any(np.delete(k3, t // 2, axis=0))
  avg = inflate.inflate_kernel(k2, t, "average_frame_initializer")
  np.testing.assert_allclose(avg.sum(0), k2, rtol=1e-6)
  np.testing.assert_allclose(avg[0], k2 / t)


def test_posemb_is_tiled_over_time_after_the_cls_row():
  pos = np.random.default_rng(0).normal(size=(1, 10, 4)).astype(np.float32)  # CLS + 3x3
  target = np.zeros((1, 1 + 2 * 9, 4), np.float32)
  out = inflate.adapt_posemb(pos, True, target, (3, 3), "tile")
  np.testing.assert_array_equal(out[:, 0], pos[:, 0])
  np.testing.assert_array_equal(out[:, 1:10], pos[:, 1:])
  np.testing.assert_array_equal(out[:, 10:], pos[:, 1:])
  no_cls = inflate.adapt_posemb(pos, True, np.zeros((1, 18, 4), np.float32), (3, 3), "tile")
  np.testing.assert_array_equal(no_cls, out[:, 1:])  # a GAP target drops the CLS row


def np_bilinear(grid, size):
  """Half-pixel-centre bilinear resize of `(h, w, D)`, edges clamped (no antialiasing)."""
  def weights(n_in, n_out):
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
      x = min(max((i + 0.5) * n_in / n_out - 0.5, 0), n_in - 1)
      lo = int(np.floor(x))
      hi = min(lo + 1, n_in - 1)
      w[i, lo] += 1 - (x - lo)
      w[i, hi] += x - lo
    return w
  wy, wx = weights(grid.shape[0], size[0]), weights(grid.shape[1], size[1])
  return np.einsum("ih,jw,hwd->ijd", wy, wx, grid)


@pytest.mark.parametrize("src, dst", [(3, 4), (4, 2), (4, 3)])
def test_posemb_bilinear_resize_values(src, dst):
  rng = np.random.default_rng(1)
  pos = rng.normal(size=(1, 1 + src * src, 5)).astype(np.float32)
  out = inflate.adapt_posemb(pos, True, np.zeros((1, 1 + dst * dst, 5), np.float32),
                             (dst, dst), "resize")
  assert out.shape == (1, 1 + dst * dst, 5)
  np.testing.assert_array_equal(out[:, 0], pos[:, 0])
  want = np_bilinear(pos[0, 1:].reshape(src, src, 5).astype(np.float64), (dst, dst))
  np.testing.assert_allclose(out[0, 1:], want.reshape(-1, 5), rtol=1e-5, atol=1e-6)
  both = inflate.adapt_posemb(pos, True, np.zeros((1, 1 + 2 * dst * dst, 5), np.float32),
                              (dst, dst), "resize_tile")
  np.testing.assert_array_equal(both[:, 1 + dst * dst:], out[:, 1:])


def test_posemb_size_change_options_refuse_what_they_cannot_do():
  pos = np.zeros((1, 17, 4), np.float32)  # 4x4 grid
  with pytest.raises(ValueError, match="'tile' cannot map a 4x4.*3x3"):
    inflate.adapt_posemb(pos, True, np.zeros((1, 10, 4), np.float32), (3, 3), "tile")
  with pytest.raises(ValueError, match="'resize' cannot tile"):
    inflate.adapt_posemb(pos, True, np.zeros((1, 33, 4), np.float32), (4, 4), "resize")


# ----------------------------------------------------------------------------- whole models


def test_vivit_spacetime_gets_inflated_kernel_tiled_posemb_and_no_head():
  config = video_config("vivit", "spacetime", kernel_init_method="")
  _, params = fresh(config)
  src = image_tree()
  out = initialise_from_tree(params, src, config)
  f, s = flatten(out), flatten(src)
  k = f["embedding/kernel"]  # (t=2, 8, 8, 3, 16): central slice is t // 2 = 1
  np.testing.assert_array_equal(k[1], s["embedding/kernel"])
  assert not np.any(k[0])
  pos = f["Transformer/posembed_input/pos_embedding"]
  np.testing.assert_array_equal(pos[:, 1:10], s["Transformer/posembed_input/pos_embedding"][:, 1:])
  np.testing.assert_array_equal(pos[:, 10:], pos[:, 1:10])
  np.testing.assert_array_equal(f["cls"], s["cls"])
  np.testing.assert_array_equal(f["output_projection/kernel"],
                                flatten(params)["output_projection/kernel"])  # head not restored
  for key in s:
    if key.startswith("Transformer/encoderblock_"):
      np.testing.assert_array_equal(f[key], s[key], err_msg=key)


def test_timesformer_temporal_attention_is_copied_from_the_spatial():
  config = video_config("timesformer", attention_type="divided_space_time")
  _, params = fresh(config)
  src = image_tree()
  out = flatten(initialise_from_tree(params, src, config))
  s = flatten(src)
  for i in range(2):
    blk = f"Transformer/encoderblock_{i}"
    for leaf in ("query/kernel", "key/bias", "value/kernel", "out/kernel", "out/bias"):
      np.testing.assert_array_equal(out[f"{blk}/temporal_attn/{leaf}"],
                                    s[f"{blk}/MultiHeadDotProductAttention_0/{leaf}"])
    np.testing.assert_array_equal(out[f"{blk}/temporal_norm1/scale"], s[f"{blk}/LayerNorm_0/scale"])
    assert not np.any(out[f"{blk}/temporal_fc/kernel"])
  assert not np.any(out["Transformer/time_embed"])
  assert not np.any(out["output_projection/kernel"])
  assert out["embedding/kernel"].shape == (1, 8, 8, 3, 16)


def _static(frame, t=4):
  return jnp.broadcast_to(frame[:, None], (frame.shape[0], t) + frame.shape[1:])


def _image_cls(src, frame):
  return np.asarray(ImageViT(ARCH).apply({"params": src}, frame)[1]["pre_logits"])


@pytest.mark.parametrize("attention_type", ["divided_space_time", "space_only"])
def test_static_video_through_inflated_timesformer_gives_the_image_cls(attention_type):
  # The from-scratch switches are on: initialising from the image zeroes time_embed and
  # temporal_fc anyway.
  config = video_config("timesformer", attention_type=attention_type, time_embed_init_std=0.5,
                        temporal_fc_zero_init=False)
  model, params = fresh(config)
  src = image_tree()
  params = initialise_from_tree(params, src, config)
  frame = jax.random.normal(jax.random.key(3), (2, 24, 24, 3))
  _, out = model.apply({"params": params}, _static(frame))
  np.testing.assert_allclose(out["pre_logits"], _image_cls(src, frame), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["central_frame_initializer", "average_frame_initializer"])
def test_static_video_through_inflated_vivit_fe_gives_the_image_cls_per_frame(method):
  config = video_config("vivit", "factorized_encoder")
  config.model.spatial_transformer.num_layers = ARCH.num_layers
  config.init_from.kernel_init_method = method
  model, params = fresh(config)
  src = image_tree()
  params = initialise_from_tree(params, src, config)
  frame = jax.random.normal(jax.random.key(3), (2, 24, 24, 3))
  _, out = model.apply({"params": params}, _static(frame))
  want = _image_cls(src, frame)
  for t in range(out["spatial_encoded"].shape[1]):
    np.testing.assert_allclose(out["spatial_encoded"][:, t], want, rtol=1e-4, atol=1e-4)


def test_static_video_through_space_only_xvit_gives_the_image_cls_per_frame():
  config = video_config("xvit", attention_type="space_only")
  model, params = fresh(config)
  src = image_tree()
  params = initialise_from_tree(params, src, config)
  frame = jax.random.normal(jax.random.key(3), (2, 24, 24, 3))
  _, out = model.apply({"params": params}, _static(frame))
  np.testing.assert_allclose(out["frame_cls"], np.repeat(_image_cls(src, frame)[:, None], 4, 1),
                             rtol=1e-4, atol=1e-4)


def test_model3_time_and_space_start_from_the_spatial_block():
  config = video_config("vivit", "factorized_self_attention_block", classifier="gap")
  _, params = fresh(config)
  src = image_tree()
  out, s = flatten(initialise_from_tree(params, src, config)), flatten(src)
  blk = "Transformer/encoderblock_1"
  for ours, theirs in (("LayerNorm_time", "LayerNorm_0"), ("LayerNorm_space", "LayerNorm_0"),
                       ("MultiHeadDotProductAttention_time/query", "MultiHeadDotProductAttention_0/query"),
                       ("MultiHeadDotProductAttention_space/out", "MultiHeadDotProductAttention_0/out"),
                       ("LayerNorm_mlp", "LayerNorm_1"), ("MlpBlock/Dense_1", "MlpBlock_0/Dense_1")):
    np.testing.assert_array_equal(out[f"{blk}/{ours}/bias"], s[f"{blk}/{theirs}/bias"])
  # GAP target: no CLS row, the 3x3 grid tiled over t=2
  np.testing.assert_array_equal(out["Transformer/posembed_input/pos_embedding"][:, :9],
                                s["Transformer/posembed_input/pos_embedding"][:, 1:])


def listed(err):
  """`(message, text of the file it names)` of an UnmatchedKeysError."""
  message = str(err.value)
  path = message.rsplit(": ", 1)[1].strip()
  with open(path) as f:
    return message, f.read()


def test_extra_source_blocks_are_skipped_and_missing_ones_are_an_error():
  config = video_config("vivit", "factorized_encoder")  # 1 spatial layer
  _, params = fresh(config)
  out, _, skipped = initialise_with_report(params, image_tree(), config)  # 2 layers: one skipped
  assert "SpatialTransformer/encoderblock_0/LayerNorm_0/scale" in flatten(out)
  src = flatten(image_tree())
  # The deeper block and the image classifier (restore_head is off) have no place.
  assert skipped == sorted(k for k in src if k.startswith(("Transformer/encoderblock_1/", "head/")))
  assert any(k.startswith("head/") for k in skipped)
  deep = video_config("vivit", "spacetime", num_layers=3)
  _, params = fresh(deep)
  with pytest.raises(UnmatchedKeysError) as err:
    initialise_from_tree(params, image_tree(), deep)
  message, text = listed(err)
  assert len(message.splitlines()) <= 3 and "target keys the checkpoint does not provide" in message
  assert "  Transformer/encoderblock_2/LayerNorm_0/scale\n" in text  # no '(from' the same key
  missing = [k for k in flatten(params) if k.startswith("Transformer/encoderblock_2/")]
  assert f"{len(missing)} target keys the checkpoint does not provide:" in text
  for k, v in src.items():  # every checkpoint array with its shape
    assert f"  {k} {v.shape}\n" in text


def test_unmatched_keys_and_shapes_are_listed():
  config = video_config("timesformer")
  _, params = fresh(config)
  src = flatten(image_tree())
  src["Transformer/encoderblock_0/LayerScale_0/gamma"] = np.ones(16, np.float32)
  with pytest.raises(UnmatchedKeysError, match="LayerScale_0/gamma"):
    initialise_from_tree(params, src, config)
  wide = image_tree(arch=ImageViTArch((8, 8), 32, 2, 32, 2, 7))
  with pytest.raises(UnmatchedKeysError) as err:
    initialise_from_tree(params, wide, config)
  message, text = listed(err)
  assert len(message.splitlines()) <= 3 and "keys with the wrong shape" in message
  assert re.search(r"(?s)keys with the wrong shape:.*\n  embedding/kernel: got", text)


def test_grid_change_needs_resize(tmp_path):
  config = video_config("timesformer")
  _, params = fresh(config)
  src = image_tree(image_size=32)  # 4x4 grid onto 3x3
  with pytest.raises(ValueError, match="resize"):
    initialise_from_tree(params, src, config)
  config.init_from.positional_embed_size_change = "resize"
  out = flatten(initialise_from_tree(params, src, config))
  assert out["Transformer/posembed_input/pos_embedding"].shape == (1, 10, 16)


def test_initialise_from_reads_config_init_from(tmp_path):
  config = video_config("timesformer")
  _, params = fresh(config)
  assert initialise_from(params, config) is params  # checkpoint_path '' = off
  src = image_tree()
  config.init_from.checkpoint_path = save_orbax(str(tmp_path / "vit.orbax"), src)
  out = initialise_from(params, config)
  assert jax.tree.structure(out) == jax.tree.structure(params)
  assert all(a.shape == b.shape and a.dtype == b.dtype
             for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(params)))
  np.testing.assert_array_equal(out["cls"], src["cls"])
  config.init_from.checkpoint_format = "vit_npz"
  np.savez(str(tmp_path / "vit.npz"), **flatten(src))
  config.init_from.checkpoint_path = str(tmp_path / "vit.npz")
  np.testing.assert_array_equal(initialise_from(params, config)["cls"], src["cls"])


def test_same_model_checkpoint_restores_everything_but_the_head(tmp_path):
  config = video_config("xvit")
  _, params = fresh(config, seed=1)
  _, trained = fresh(config, seed=2)
  trained["output_projection"]["kernel"] = np.ones_like(trained["output_projection"]["kernel"])
  out = flatten(initialise_from_tree(params, trained, config))
  t = flatten(trained)
  for k, v in out.items():
    if k.startswith("output_projection"):
      assert not np.any(v)
    else:
      np.testing.assert_array_equal(v, t[k], err_msg=k)


def _vivit_fe(num_frames, spatial_layers, seed):
  config = tiny_config("factorized_encoder", knn=False)
  config.dataset.num_frames = num_frames
  config.model.spatial_transformer.num_layers = spatial_layers
  model = build_model(config.model, num_classes=5)
  x = jnp.zeros((1, num_frames, 24, 24, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
  rng = np.random.default_rng(seed)
  return config, jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def test_kinetics_video_checkpoint_into_a_shallower_shorter_model():
  """A ViViT-FE checkpoint with more spatial layers and more frames (Kinetics 32 frames into
  Dk-ViViT's 8): deeper blocks are skipped, the temporal position embedding is interpolated
  linearly over time, every other array is copied, the head is kept fresh."""
  _, src = _vivit_fe(num_frames=8, spatial_layers=3, seed=1)  # 4 tubelet steps
  config, params = _vivit_fe(num_frames=6, spatial_layers=2, seed=2)  # 3 steps
  out, report, skipped = initialise_with_report(params, src, config)
  out, s, p = flatten(out), flatten(src), flatten(params)
  assert not any(k.startswith("SpatialTransformer/encoderblock_2") for k in out)
  assert skipped == sorted(k for k in s if k.startswith(("SpatialTransformer/encoderblock_2/",
                                                         "output_projection/")))
  for k in out:
    if k.startswith("output_projection"):
      np.testing.assert_array_equal(out[k], p[k])
      assert report[k] == "fresh"
    elif k != "TemporalTransformer/posembed_input/pos_embedding":
      np.testing.assert_array_equal(out[k], s[k], err_msg=k)
      assert report[k] == "restored", k
  # Rows: CLS, then steps 0..3 -> positions 0, 1.5, 3 of the source's four.
  table = s["TemporalTransformer/posembed_input/pos_embedding"][0]
  want = np.stack([table[0], table[1], 0.5 * (table[2] + table[3]), table[4]])
  np.testing.assert_allclose(out["TemporalTransformer/posembed_input/pos_embedding"][0], want,
                             rtol=1e-6)
  assert report["TemporalTransformer/posembed_input/pos_embedding"] == "inflated"


def test_restore_head_needs_matching_classes():
  config = video_config("xvit")
  _, params = fresh(config, seed=1)
  _, trained = fresh(config, seed=2)
  config.init_from.restore_head = True
  out = flatten(initialise_from_tree(params, trained, config))
  np.testing.assert_array_equal(out["output_projection/kernel"],
                                flatten(trained)["output_projection/kernel"])
  trained["output_projection"]["kernel"] = trained["output_projection"]["kernel"][:, :3]
  trained["output_projection"]["bias"] = trained["output_projection"]["bias"][:3]
  with pytest.raises(ValueError, match="init_from.restore_head.*3 vs 5"):
    initialise_from_tree(params, trained, config)
