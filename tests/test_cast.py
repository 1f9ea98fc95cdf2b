"""CAST: parameter tree, identity at initialisation, cross-attention windows, heads, config."""

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import load_config
from vivit_knn import config as config_lib
from vivit_knn.models.cast import CAST, TRAINABLE_PATTERNS, BCASTBlock, joint_action_log_probs
from vivit_knn.weights.cast_experts import merge_expert_params
from vivit_knn.models.experts import CLIPVisionExpert, VideoMAEExpert
from vivit_knn.models.registry import build_model
from vivit_knn.train import losses, metrics, multihead, optim
from vivit_knn.weights.tree import UnmatchedKeysError

TINY = dict(hidden_size=32, num_heads=4, mlp_dim=64, num_layers=2, patch_size=(8, 8, 2),
            cross_dim=16, adapter_dim=8)
CLIP_SHAPE = (2, 8, 32, 32, 3)  # B, T, H, W, C -> T' = 4 tubelet times, P = 16 patches


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _unflat(flat):
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _is_trainable(path):
  return any(re.search(pattern, path) for pattern in TRAINABLE_PATTERNS)


def _randomize_experts(params, seed=0):
  """Every frozen expert leaf gets random values (LayerNorm scales around 1)."""
  rng = np.random.default_rng(seed)
  flat = _flat(params)
  for path, value in flat.items():
    if path.split("/")[0] in ("spatial", "temporal") and not _is_trainable(path):
      noise = rng.normal(0.0, 0.3, value.shape).astype(np.float32)
      flat[path] = 1.0 + noise if path.endswith("scale") else noise
  return _unflat(flat)


def _tiny_cast(**kw):
  return CAST(num_classes=4, **{**TINY, **kw})


def test_param_tree_and_trainable_split():
  model = _tiny_cast()
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(CLIP_SHAPE))["params"]
  assert set(params) == {"spatial", "temporal", "cross_block_0", "cross_block_1",
                         "spatial_head_adapter", "temporal_head_adapter", "head"}
  assert set(params["spatial"]) == {"conv1", "class_embedding", "positional_embedding", "ln_pre",
                                    "encoderblock_0", "encoderblock_1", "ln_post"}
  assert set(params["temporal"]) == {"patch_embed", "encoderblock_0", "encoderblock_1", "fc_norm"}
  assert set(params["spatial"]["encoderblock_0"]) == {
      "LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0",
      "attention_adapter", "mlp_adapter"}
  assert set(params["cross_block_0"]) == {
      "cross_s_down", "cross_t_down", "cross_s_norm", "cross_t_norm", "t2s", "s2t",
      "cross_s_up", "cross_t_up", "spatial_time_pos", "temporal_time_pos",
      "spatial_space_pos", "temporal_space_pos"}
  assert params["spatial"]["positional_embedding"].shape == (17, 32)
  assert params["cross_block_0"]["spatial_time_pos"].shape == (4, 16)
  assert params["cross_block_0"]["spatial_space_pos"].shape == (16, 16)
  assert "bias" not in params["spatial"]["conv1"]
  mask = _flat(optim.trainable_mask(params, TRAINABLE_PATTERNS))
  frozen = {p for p, t in mask.items() if not t}
  # Exactly the experts' own weights are frozen (adapters, ln_post, fc_norm train).
  for path, trainable in mask.items():
    top, rest = path.split("/")[0], path.split("/", 1)[1]
    expert_own = top in ("spatial", "temporal") and "adapter" not in rest and not rest.startswith(
        ("ln_post", "fc_norm"))
    assert trainable != expert_own, path
  assert "spatial/ln_pre/scale" in frozen and "temporal/patch_embed/kernel" in frozen


def test_vit_b_trainable_parameter_count():
  model = CAST(num_classes=400)  # ViT-B/16 experts, B-CAST 384, adapters 192
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 16, 224, 224, 3), jnp.float32))["params"]
  mask = optim.trainable_mask(params, TRAINABLE_PATTERNS)
  sizes = jax.tree.map(lambda p, t: (p.size if t else 0, p.size), params, mask)
  trainable = sum(s[0] for s in jax.tree.leaves(sizes, is_leaf=lambda x: isinstance(x, tuple)))
  total = sum(s[1] for s in jax.tree.leaves(sizes, is_leaf=lambda x: isinstance(x, tuple)))
  print(f"CAST ViT-B/16, 400 classes: {trainable / 1e6:.2f}M trainable of {total / 1e6:.2f}M")
  assert 40e6 <= trainable <= 50e6
  assert params["spatial"]["positional_embedding"].shape == (197, 768)


def test_bcast_at_init_equals_the_experts_run_separately():
  model = _tiny_cast()
  x = jax.random.normal(jax.random.key(1), CLIP_SHAPE)
  params = _randomize_experts(model.init(jax.random.key(0), x)["params"])
  _, out = model.apply({"params": params}, x)

  def expert_only(tree):  # the expert's own weights, no adapters
    return _unflat({k: v for k, v in _flat(tree).items() if "adapter" not in k})

  common = {k: TINY[k] for k in ("hidden_size", "num_heads", "mlp_dim", "num_layers")}
  clip = CLIPVisionExpert(num_patches=16, patch_size=(8, 8), **common)
  vmae = VideoMAEExpert(patch_size=(8, 8, 2), **common)
  b, t = CLIP_SHAPE[0], CLIP_SHAPE[1] // 2
  frames = x[:, 1::2].reshape(b * t, 32, 32, 3)  # frames 1, 3, 5, 7
  _, s_tokens = clip.apply({"params": expert_only(params["spatial"])}, frames)
  v_feat, v_tokens = vmae.apply({"params": expert_only(params["temporal"])}, x)
  s_tokens = s_tokens.reshape(b, t, 17, 32)
  s_feat = clip.apply({"params": expert_only(params["spatial"])}, s_tokens, method="pool")

  assert float(jnp.std(s_tokens)) > 0.1 and float(jnp.std(v_tokens)) > 0.1
  np.testing.assert_allclose(out["spatial_encoded"], s_tokens, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["temporal_encoded"], v_tokens, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["spatial_features"], s_feat, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["temporal_features"], v_feat, rtol=1e-5, atol=1e-5)

  # Not vacuous: once the B-CAST weights (zero up-projections included) move, both
  # streams change.
  flat = _flat(params)
  rng = np.random.default_rng(1)
  for path in [p for p in flat if p.startswith("cross_block_")]:
    flat[path] = rng.normal(0.0, 0.5, flat[path].shape).astype(np.float32)
  _, moved = model.apply({"params": _unflat(flat)}, x)
  for name, ref in (("spatial_encoded", s_tokens), ("temporal_encoded", v_tokens)):
    assert float(jnp.max(jnp.abs(moved[name] - ref))) > 0.1 * float(jnp.std(ref)), name


def _bcast_setup():
  b, t, p, d = 2, 4, 6, 16
  block = BCASTBlock(num_heads=2, cross_dim=8)
  s = jax.random.normal(jax.random.key(0), (b * t, 1 + p, d))
  v = jax.random.normal(jax.random.key(1), (b, t * p, d))
  params = block.init(jax.random.key(2), s, v, True)["params"]
  flat = _flat(params)
  for i, path in enumerate(p for p in flat if "_up/" in p):  # make the cross paths visible
    flat[path] = np.asarray(jax.random.normal(jax.random.key(10 + i), flat[path].shape))
  return block, _unflat(flat), s, v, (b, t, p, d)


def _changed(block, params, s, v, s2, v2, shape):
  b, t, p, d = shape
  s_out, v_out = block.apply({"params": params}, s, v, True)
  s_new, v_new = block.apply({"params": params}, s2, v2, True)
  ds = np.abs(np.asarray(s_new - s_out)).max(-1).reshape(b, t, 1 + p) > 1e-6
  dv = np.abs(np.asarray(v_new - v_out)).max(-1).reshape(b, t, p) > 1e-6
  return ds, dv  # changed spatial tokens [b, t, 1 + p] (CLS at 0), temporal [b, t, p]


def test_t2s_mixes_only_along_time():
  block, params, s, v, shape = _bcast_setup()
  b, t, p, _ = shape
  t0, p0 = 2, 3
  v2 = v.reshape(b, t, p, -1).at[0, t0, p0].add(5.0).reshape(v.shape)
  ds, dv = _changed(block, params, s, v, s, v2, shape)
  # Spatial tokens of clip 0 at grid position p0 change in every frame; nothing else.
  expected = np.zeros_like(ds)
  expected[0, :, 1 + p0] = True
  np.testing.assert_array_equal(ds, expected)
  # The temporal stream's own update (S2T) reads spatial tokens only: only the token itself.
  expected_v = np.zeros_like(dv)
  expected_v[0, t0, p0] = True
  np.testing.assert_array_equal(dv, expected_v)


def test_s2t_mixes_only_along_space_and_ignores_cls():
  block, params, s, v, shape = _bcast_setup()
  b, t, p, _ = shape
  t0, p0 = 1, 4
  s2 = s.reshape(b, t, 1 + p, -1).at[1, t0, 1 + p0].add(5.0).reshape(s.shape)
  ds, dv = _changed(block, params, s, v, s2, v, shape)
  # Temporal tokens of clip 1 at time t0 change at every grid position; nothing else.
  expected_v = np.zeros_like(dv)
  expected_v[1, t0, :] = True
  np.testing.assert_array_equal(dv, expected_v)
  expected = np.zeros_like(ds)
  expected[1, t0, 1 + p0] = True
  np.testing.assert_array_equal(ds, expected)

  s3 = s.reshape(b, t, 1 + p, -1).at[1, t0, 0].add(5.0).reshape(s.shape)  # the CLS
  ds, dv = _changed(block, params, s, v, s3, v, shape)
  assert not dv.any()
  expected = np.zeros_like(ds)
  expected[1, t0, 0] = True
  np.testing.assert_array_equal(ds, expected)


def test_ek100_heads_give_joint_action_log_probs():
  model = _tiny_cast(num_verbs=3, num_nouns=5).clone(num_classes=15)
  x = jax.random.normal(jax.random.key(1), CLIP_SHAPE)
  params = model.init(jax.random.key(0), x)["params"]
  assert {"noun_head", "verb_head"} <= set(params) and "head" not in params
  assert "spatial_head_adapter" not in params
  flat = _flat(params)
  for path in ("noun_head/bias", "verb_head/bias"):
    flat[path] = np.asarray(jax.random.normal(jax.random.key(len(path)), flat[path].shape))
  logits, out = model.apply({"params": _unflat(flat)}, x)
  verb, noun = out["verb_logits"], out["noun_logits"]
  assert logits.shape == (2, 15) and verb.shape == (2, 3) and noun.shape == (2, 5)
  np.testing.assert_allclose(jax.nn.logsumexp(logits, -1), 0.0, atol=1e-5)
  verb_label, noun_label = jnp.array([2, 0]), jnp.array([1, 4])
  action = verb_label * 5 + noun_label
  joint_ce = losses.softmax_cross_entropy(logits, jax.nn.one_hot(action, 15))
  sum_ce = (losses.softmax_cross_entropy(verb, jax.nn.one_hot(verb_label, 3))
            + losses.softmax_cross_entropy(noun, jax.nn.one_hot(noun_label, 5)))
  np.testing.assert_allclose(joint_ce, sum_ce, rtol=1e-5)
  np.testing.assert_array_equal(jnp.argmax(logits, -1),
                                jnp.argmax(verb, -1) * 5 + jnp.argmax(noun, -1))

  with pytest.raises(ValueError, match="15 actions"):
    model.clone(num_classes=4).init(jax.random.key(0), x)


def test_built_from_config_and_validated():
  config = load_config("synthetic_cast")
  config_lib.validate(config, (8, 32, 32, 3))
  model = build_model(config.model, 4)
  assert isinstance(model, CAST) and (model.hidden_size, model.cross_dim) == (64, 32)
  assert model.adapter_dim == 16
  for field, value, message in (("adapter_dim", 0, "model.cast.adapter_dim"),
                                ("cross_dim", 30, "model.cast.cross_dim"),
                                ("num_verbs", 3, "model.cast.num_verbs")):
    bad = load_config("synthetic_cast")
    bad.model.cast[field] = value
    with pytest.raises(ValueError, match=message):
      config_lib.validate(bad, (8, 32, 32, 3))
  bad = load_config("synthetic_cast")
  bad.model.attention.kind = "knn"
  with pytest.raises(ValueError, match="model.attention.kind"):
    config_lib.validate(bad, (8, 32, 32, 3))


def test_merge_expert_params_places_trees_and_lists_mismatches():
  model = _tiny_cast()
  params = jax.tree.map(np.asarray, model.init(jax.random.key(0), jnp.zeros(CLIP_SHAPE))["params"])
  spatial = {k: v for k, v in _flat(params["spatial"]).items() if "adapter" not in k}
  new_spatial = {k: v + 1.0 for k, v in spatial.items()}
  merged = merge_expert_params(params, spatial=_unflat(new_spatial))
  np.testing.assert_array_equal(merged["spatial"]["ln_pre"]["bias"],
                                params["spatial"]["ln_pre"]["bias"] + 1.0)
  np.testing.assert_array_equal(merged["temporal"]["patch_embed"]["kernel"],
                                params["temporal"]["patch_embed"]["kernel"])
  np.testing.assert_array_equal(  # adapters keep their initial values
      merged["spatial"]["encoderblock_0"]["mlp_adapter"]["down"]["kernel"],
      params["spatial"]["encoderblock_0"]["mlp_adapter"]["down"]["kernel"])

  broken = dict(new_spatial)
  del broken["ln_pre/scale"]
  broken["ln_pre/gamma"] = broken["ln_pre/bias"]
  broken["positional_embedding"] = np.zeros((197, 32), np.float32)
  with pytest.raises(UnmatchedKeysError) as err:
    merge_expert_params(params, spatial=_unflat(broken))
  message = str(err.value)
  for text in ("spatial/ln_pre/gamma", "spatial/ln_pre/scale",
               "spatial/positional_embedding: got (197, 32), want (17, 32)"):
    assert text in message


def test_verb_noun_objective_equals_joint_cross_entropy_for_soft_targets():
  num_verbs, num_nouns, b = 3, 5, 4
  verb = jax.random.normal(jax.random.key(0), (b, num_verbs))
  noun = jax.random.normal(jax.random.key(1), (b, num_nouns))
  verb_labels, noun_labels = jnp.array([0, 2, 1, 2]), jnp.array([4, 0, 3, 3])
  action = verb_labels * num_nouns + noun_labels
  targets = losses.one_hot(action, num_verbs * num_nouns, label_smoothing=0.1)
  targets = 0.7 * targets + 0.3 * targets[::-1]  # mixup-style soft targets
  joint = joint_action_log_probs(verb, noun)
  objective = multihead.VerbNounObjective(num_verbs, num_nouns)
  loss, terms = objective({}, phase="main", inputs=None, targets=targets, logits=joint,
                          intermediates={"verb_logits": verb, "noun_logits": noun},
                          step=0, rng=None)
  np.testing.assert_allclose(loss, losses.softmax_cross_entropy(joint, targets), rtol=1e-5)
  np.testing.assert_allclose(loss, terms["verb_ce"] + terms["noun_ce"], rtol=1e-6)
  acc = metrics.EvalAccumulator(num_verbs * num_nouns, factors=(num_verbs, num_nouns))
  acc.update(np.asarray(joint), np.asarray(action))
  res = acc.result()
  verb_ok = np.asarray(jnp.argmax(verb, -1) == verb_labels)
  noun_ok = np.asarray(jnp.argmax(noun, -1) == noun_labels)
  top1 = np.asarray(jnp.argmax(joint, -1) == action, np.float32)
  assert res["action_top1"] == res["top1"] == pytest.approx(top1.mean())
  assert res["action_top1"] == pytest.approx((verb_ok & noun_ok).mean())
  assert res["verb_top1"] == pytest.approx(verb_ok.mean())
  assert res["noun_top1"] == pytest.approx(noun_ok.mean())
