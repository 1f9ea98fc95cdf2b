"""Scale-out: multi-process equality, FSDP/tensor sharding, mesh change on restore,
SIGTERM checkpoints, the non-finite guard and gradient accumulation."""

import json
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.events import has_scalar
from tests.tiny import ROOT, run_python, tiny_config
from vivit_knn.train import sharding
from vivit_knn.train.checkpoint import item_path, restore_on_host
from vivit_knn.train.experiment import build_experiment
from vivit_knn.train.steps import make_train_step

CPU8 = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
TINY = ["-m", "vivit_knn.main", "--config=configs/synthetic_tiny.py",
        "--config.train.eval_at_end=False", "--config.train.global_batch_size=16"]


def _ckpt_leaves(workdir, step):
  return jax.tree.leaves(restore_on_host(item_path(str(workdir), step))["params"])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  """2 local processes x 4 CPU devices train like 1 process x 8 devices."""
  steps = ["--config.train.num_train_steps=4", "--config.train.checkpoint_every_steps=4"]
  run_python(TINY + steps + [f"--workdir={tmp_path / 'one'}"], CPU8)

  port = _free_port()
  env = dict(CPU8, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  import os
  full_env = dict(os.environ, PYTHONPATH=ROOT, **env)
  procs = [subprocess.Popen(
      [sys.executable] + TINY + steps + [
          f"--workdir={tmp_path / 'two'}", f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  one, two = _ckpt_leaves(tmp_path / "one", 4), _ckpt_leaves(tmp_path / "two", 4)
  assert len(one) == len(two) > 10
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


_SHARDED_STEP = r"""
import json, jax, numpy as np
from tests.tiny import tiny_config
from vivit_knn.train import sharding
from vivit_knn.train.checkpoint import item_path, restore_on_host
from vivit_knn.train.experiment import build_experiment
from vivit_knn.train.steps import make_train_step

def run(model_type, data, fsdp, tensor):
  config = tiny_config(model_type, global_batch_size=16)
  config.mesh.update(data=data, fsdp=fsdp, tensor=tensor, fsdp_min_param_size=16)
  exp = build_experiment(config)
  state = exp.init_state(jax.random.key(0))
  step = make_train_step(exp)
  batches = exp.dataset.train_batches(16, seed=0)
  losses = []
  for _ in range(2):
    state, m = step(state, sharding.shard_batch(next(batches), exp.mesh), jax.random.key(1))
    losses.append(float(m["loss"]))
  hlo = jax.jit(lambda p, x: exp.model.apply({"params": p}, x)[0])
  with jax.set_mesh(exp.mesh):
    text = hlo.lower(state.params, sharding.shard_batch(next(batches), exp.mesh)["inputs"]).as_text()
  assert text.count("sharding_constraint") >= 2, "activation constraints missing"
  specs = {jax.tree_util.keystr(p): list(x.sharding.spec)
           for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
  return losses, [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))], specs

out = {}
for model_type in ("factorized_encoder", "spacetime", "factorized_self_attention_block",
                   "factorized_dot_product_attention"):
  ref_l, ref_p, _ = run(model_type, 8, 1, 1)
  # every model on a mesh using all three axes; the factorised encoder on FSDP-only and TP-only too
  meshes = ((2, 2, 2), (2, 4, 1), (4, 1, 2)) if model_type == "factorized_encoder" else ((2, 2, 2),)
  for mesh in meshes:
    l, p, specs = run(model_type, *mesh)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref_p, p))
    out[f"{model_type}{mesh}"] = {"loss_diff": max(abs(a - b) for a, b in zip(ref_l, l)),
                                  "param_diff": diff, "specs": specs, "loss": l}
print(json.dumps(out))
"""


def test_fsdp_and_tensor_parallel_steps_equal_data_parallel():
  res = json.loads(run_python(_SHARDED_STEP, CPU8).stdout.strip().splitlines()[-1])
  assert len(res) == 6
  for name, r in res.items():
    assert r["loss_diff"] < 1e-5, (name, r["loss"])
    assert r["param_diff"] < 1e-5, name
  specs = res["spacetime(2, 2, 2)"]["specs"]
  q = [v for k, v in specs.items() if "encoderblock_0" in k and "'query'" in k and "kernel" in k]
  mlp0 = [v for k, v in specs.items() if "encoderblock_0" in k and "Dense_0" in k and "kernel" in k]
  mlp1 = [v for k, v in specs.items() if "encoderblock_0" in k and "Dense_1" in k and "kernel" in k]
  assert q == [["fsdp", "tensor", None]]  # heads split over tensor (Megatron)
  assert mlp0 == [["fsdp", "tensor"]]  # column-parallel
  assert mlp1 == [["tensor", "fsdp"]]  # row-parallel


_RESTORE_OTHER_MESH = r"""
import json, sys, jax, numpy as np
from tests.tiny import tiny_config
from vivit_knn.train import checkpoint
from vivit_knn.train.experiment import build_experiment

workdir = sys.argv[1]
saved = tiny_config(global_batch_size=16)
saved.mesh.update(data=8, fsdp=1, tensor=1)
exp = build_experiment(saved)
state = exp.init_state(jax.random.key(3))
ck = checkpoint.Checkpointer(workdir)
ck.save(1, state, force=True)
ck.close()

other = tiny_config(global_batch_size=16)
other.mesh.update(data=2, fsdp=2, tensor=2, fsdp_min_param_size=16)
exp2 = build_experiment(other)
ck = checkpoint.Checkpointer(workdir)
restored = ck.restore(exp2.abstract_state())
same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(jax.device_get(state)),
                                                jax.tree.leaves(jax.device_get(restored))))
resharded = sum(1 for x in jax.tree.leaves(restored.params)
                if not x.sharding.is_fully_replicated and "tensor" in str(x.sharding.spec))
print(json.dumps({"same": same, "resharded": resharded}))
"""


def test_restore_onto_a_different_mesh(tmp_path):
  out = run_python(["-c", _RESTORE_OTHER_MESH, str(tmp_path)], CPU8)
  res = json.loads(out.stdout.strip().splitlines()[-1])
  assert res["same"] and res["resharded"] > 0


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
  import os
  work = tmp_path / "run"
  args = TINY + [f"--workdir={work}", "--config.train.num_train_steps=100000",
                 "--config.train.checkpoint_every_steps=100000",
                 "--config.train.log_every_steps=1"]
  proc = subprocess.Popen([sys.executable] + args, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  deadline = time.time() + 300
  while not has_scalar(work / "train", "train/loss") and time.time() < deadline:
    time.sleep(0.5)  # first metrics written: the loop is running
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 4, err[-2000:]  # the documented "preempted, saved" code
  assert "preempted at step" in out
  saved = [int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and 0 < saved[0] < 100000
  resumed = run_python(TINY + [f"--workdir={work}",
                               f"--config.train.num_train_steps={saved[0] + 2}"])
  assert resumed.returncode == 0
  assert (work / "checkpoints" / str(saved[0] + 2)).is_dir()


def test_nan_loss_stops_and_keeps_previous_checkpoint(tmp_path):
  work = tmp_path / "run"
  nan_at_6 = ["-m", "tests.faults", "nan_loss_at_step=6"] + TINY[2:]  # the same command
  proc = run_python(nan_at_6 + [f"--workdir={work}", "--config.train.num_train_steps=12",
                                "--config.train.checkpoint_every_steps=4",
                                "--config.train.log_every_steps=100"], check=False)
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert "stopped without saving" in proc.stderr and "step 4" in proc.stderr
  assert sorted(p.name for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
  assert all(np.all(np.isfinite(x)) for x in _ckpt_leaves(work, 4))


def test_grad_accumulation_equals_one_big_batch():
  results = {}
  for accum in (1, 4):
    config = tiny_config(grad_accum_steps=accum, global_batch_size=16)
    config.model.dropout_rate = 0.0
    exp = build_experiment(config)
    state = exp.init_state(jax.random.key(0))
    step = make_train_step(exp)
    batches = exp.dataset.train_batches(16, seed=0)
    losses = []
    for _ in range(3):  # several steps, so the trunk (behind a zero-init head) moves too
      state, m = step(state, sharding.shard_batch(next(batches), exp.mesh), jax.random.key(1))
      losses.append(float(m["loss"]))
    results[accum] = (losses, jax.tree.leaves(jax.device_get(state.params)))
  np.testing.assert_allclose(results[1][0], results[4][0], rtol=1e-5)
  for a, b in zip(results[1][1], results[4][1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert results[1][0][0] != results[1][0][-1]


def test_grad_accum_must_split_the_batch():
  config = tiny_config(grad_accum_steps=3)
  with pytest.raises(ValueError, match=r"train\.grad_accum_steps"):
    build_experiment(config)


def test_remat_gives_the_same_gradients():
  grads = {}
  for remat in (False, True):
    config = tiny_config("spacetime")
    config.model.remat = remat
    exp = build_experiment(config)
    params = exp.init_params(jax.random.key(0))
    params = jax.tree.map(lambda p: p + 0.01, params)  # non-zero head: the trunk gets gradient
    x = jax.random.normal(jax.random.key(1), (2,) + tuple(exp.dataset.info.input_shape))

    def loss(p):
      logits, _ = exp.model.apply({"params": p}, x, train=False)
      return (logits ** 2).sum()

    grads[remat] = jax.tree.leaves(jax.jit(jax.grad(loss))(params))
  assert any(np.abs(g).max() > 0 for g in grads[False])
  for a, b in zip(grads[False], grads[True]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_activation_logical_names_map_to_mesh_axes():
  from jax.sharding import AbstractMesh, PartitionSpec as P
  from vivit_knn.models.partitioning import activation_spec
  mesh = AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))
  assert activation_spec((8, 10, 64), ("batch", None, "mlp"), mesh) == P(("data", "fsdp"), None, "tensor")
  assert activation_spec((8, 10, 64), ("batch", None, "embed"), mesh) == P(("data", "fsdp"), None, None)
  # a batch of 6 does not split 4 ways, and an odd hidden size not 2 ways: left replicated
  assert activation_spec((6, 10, 63), ("batch", None, "mlp"), mesh) == P(None, None, None)
