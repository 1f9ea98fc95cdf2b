"""Freezing (`optimizer.trainable_patterns`) and layer-wise lr decay (`optimizer.layer_decay`)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.tiny import load_config
from vivit_knn import config as config_lib
from vivit_knn.models.cast import TRAINABLE_PATTERNS
from vivit_knn.train import optim, sharding, steps
from vivit_knn.train.experiment import build_experiment


def _flat(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_cast_train_step_leaves_frozen_params_bitwise_unchanged():
  config = load_config("synthetic_cast")
  config.optimizer.trainable_patterns = TRAINABLE_PATTERNS  # the paper's freezing
  config.dataset.num_train, config.dataset.num_eval = 16, 8
  config.train.global_batch_size = 8
  config.train.num_train_steps = 3
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 0.05
  exp = build_experiment(config)
  state = exp.init_state(jax.random.key(0))
  before = _flat(state.params)
  train_step = steps.make_train_step(exp, exp.objective.init_frozen(exp, "main"), "main")
  batches = exp.dataset.train_batches(config.train.global_batch_size)
  for _ in range(3):  # the zero-initialised up-projections unblock the rest after one step
    state, metrics = train_step(state, sharding.shard_batch(next(batches), exp.mesh),
                                jax.random.key(1))
  assert np.isfinite(float(metrics["loss"]))
  after = _flat(state.params)
  mask = _flat(optim.trainable_mask(state.params, TRAINABLE_PATTERNS))

  frozen = [p for p, t in mask.items() if not t]
  trainable = [p for p, t in mask.items() if t]
  assert len(frozen) > 50 and len(trainable) > 50
  for path in frozen:
    assert after[path].tobytes() == before[path].tobytes(), path
  unchanged = {p for p in trainable if np.array_equal(after[p], before[p])}
  # After the last T2S only per-token MLPs run and the spatial features read the CLS,
  # which T2S does not update: the last T2S has no gradient (its kernels only decay).
  last_t2s = {f"cross_block_1/t2s/{n}/bias" for n in ("query", "key", "value", "out")}
  assert unchanged == last_t2s, unchanged


def test_frozen_params_get_no_optimizer_state_and_no_decay():
  params = {"expert": {"kernel": jnp.ones((3, 3))}, "head": {"kernel": jnp.ones((3, 2))}}
  cfg = config_lib.optimizer_config()
  cfg.name, cfg.weight_decay, cfg.trainable_patterns = "adamw", 0.5, (r"^head/",)
  tx, _ = optim.build_optimizer(cfg, 10)
  state = tx.init(params)
  leaves = jax.tree.leaves(state)
  # Adam moments exist for the head only (2 x 6 entries), not for the 9 frozen ones.
  assert sum(np.size(x) for x in leaves if np.ndim(x) > 0) == 12
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["expert"]["kernel"], params["expert"]["kernel"])
  assert not np.array_equal(new["head"]["kernel"], params["head"]["kernel"])


def test_trainable_patterns_errors():
  params = {"a": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match="optimizer.trainable_patterns.*match no parameter"):
    optim.trainable_mask(params, ("nothing",))
  with pytest.raises(ValueError, match="optimizer.trainable_patterns: invalid regex"):
    optim.trainable_mask(params, ("(",))
  assert all(jax.tree.leaves(optim.trainable_mask(params, ())))


def test_layer_ids_and_layer_decay_scales():
  params = {
      "spatial": {"conv1": {"kernel": jnp.ones(2)}, "ln_pre": {"scale": jnp.ones(2)},
                  "encoderblock_0": {"k": jnp.ones(2)}, "encoderblock_1": {"k": jnp.ones(2)},
                  "ln_post": {"scale": jnp.ones(2)}},
      "temporal": {"patch_embed": {"kernel": jnp.ones(2)}, "encoderblock_1": {"k": jnp.ones(2)}},
      "cross_block_1": {"spatial_time_pos": jnp.ones(2)},
      "head": {"kernel": jnp.ones(2)},
  }
  ids = _flat(optim._layers(params)[0])
  assert ids["spatial/conv1/kernel"] == 0 and ids["temporal/patch_embed/kernel"] == 0
  assert ids["spatial/ln_pre/scale"] == 0
  assert ids["spatial/encoderblock_0/k"] == 1 and ids["spatial/encoderblock_1/k"] == 2
  assert ids["temporal/encoderblock_1/k"] == 2 and ids["cross_block_1/spatial_time_pos"] == 2
  assert ids["head/kernel"] == 3 and ids["spatial/ln_post/scale"] == 3

  cfg = config_lib.optimizer_config()
  cfg.name, cfg.momentum, cfg.grad_clip_norm, cfg.layer_decay = "sgd", 0.0, 0.0, 0.5
  tx, sched = optim.build_optimizer(cfg, 10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = float(sched(0))
  got = {k: float(v[0]) for k, v in _flat(updates).items()}
  for path, layer in ids.items():  # L = 2 blocks: scale 0.5 ** (3 - layer)
    np.testing.assert_allclose(got[path], -lr * 0.5 ** (3 - layer), rtol=1e-6, err_msg=path)

  cfg.layer_decay = 1.5
  with pytest.raises(ValueError, match="optimizer.layer_decay"):
    optim.build_optimizer(cfg, 10)
