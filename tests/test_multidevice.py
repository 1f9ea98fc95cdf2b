"""A jit step on a forced 8-device CPU mesh gives the same loss and params as on 1 device."""

import json

from tests.tiny import run_python

_SCRIPT = r"""
import json, jax, numpy as np
from tests.tiny import tiny_config
from vivit_knn.train import sharding
from vivit_knn.train.experiment import build_experiment
from vivit_knn.train.steps import make_train_step

assert jax.device_count() == 8, jax.devices()
config = tiny_config()
config.mesh.fsdp_min_param_size = 64  # shard every sizeable kernel over fsdp for real

def run(devices, fsdp):
  config.mesh.fsdp = fsdp
  exp = build_experiment(config, devices=devices)
  state = exp.init_state(jax.random.key(0))
  step = make_train_step(exp)
  batches = exp.dataset.train_batches(config.train.global_batch_size, seed=0)
  losses = []
  for _ in range(3):
    state, m = step(state, sharding.shard_batch(next(batches), exp.mesh), jax.random.key(1))
    losses.append(float(m["loss"]))
  sharded = sum(1 for x in jax.tree.leaves(state.params) if not x.sharding.is_fully_replicated)
  return losses, jax.device_get(state.params), sharded, exp.mesh.shape

l8, p8, s8, mesh8 = run(jax.devices(), 2)
l1, p1, s1, mesh1 = run(jax.devices()[:1], 1)
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)))
print(json.dumps({"l8": l8, "l1": l1, "sharded8": s8, "mesh8": dict(mesh8), "max_param_diff": diff}))
"""


def test_eight_device_mesh_matches_one_device():
  out = run_python(_SCRIPT, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                             "JAX_PLATFORMS": "cpu"})
  res = json.loads(out.stdout.strip().splitlines()[-1])
  assert res["mesh8"] == {"data": 4, "fsdp": 2, "tensor": 1}
  assert res["sharded8"] > 0, "no parameter was actually sharded over fsdp"
  for a, b in zip(res["l8"], res["l1"]):
    assert abs(a - b) < 1e-5 * max(1.0, abs(b)), (res["l8"], res["l1"])
  assert res["l8"][0] != res["l8"][-1]  # the steps did update something
  assert res["max_param_diff"] < 1e-5
