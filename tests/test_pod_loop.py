"""The loop as a pod runs it: no host collective on ordinary steps, one stop step for every
process, batches prefetched to the devices, one sharding table, shardings computed once,
and restores that tell damage from a storage failure."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from tests.events import has_scalar
from tests.tiny import ROOT, run_python, tiny_config

TINY = ["--config=configs/synthetic_tiny.py", "--config.train.eval_at_end=False",
        "--config.train.global_batch_size=8"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(module_args, workdir, extra):
  """Starts 2 processes of one run (2 CPU devices each) on a local coordinator."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable] + module_args + TINY + extra + [
          f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def test_ordinary_steps_make_no_host_collective_on_two_processes(tmp_path):
  counts = tmp_path / "counts.json"
  procs = _two_processes(["-m", "tests.host_syncs", str(counts)], tmp_path / "run",
                         ["--config.train.num_train_steps=10",
                          "--config.train.log_every_steps=5",
                          "--config.train.checkpoint_every_steps=5"])
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  for process in (0, 1):
    by_step = {int(k): v for k, v in json.loads(
        (tmp_path / f"counts.json.{process}").read_text())["by_step"].items()}
    ordinary = [s for s in range(1, 11) if s % 5]
    assert all(by_step.get(s, 0) == 0 for s in ordinary), by_step
    # The stop flag is agreed on at log and save steps: the count would see a collective.
    assert by_step.get(5, 0) >= 1 and by_step.get(10, 0) >= 1, by_step


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
  work = tmp_path / "run"
  procs = _two_processes(["-m", "vivit_knn.main"], work,
                         ["--config.train.num_train_steps=100000",
                          "--config.train.checkpoint_every_steps=100000",
                          "--config.train.log_every_steps=2"])
  deadline = time.time() + 300
  while not has_scalar(work / "train", "train/loss") and time.time() < deadline:
    time.sleep(0.5)  # first metrics written: both processes are in the loop
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [4, 4], [err[-2000:] for _, err in outs]
  stopped = {int(re.search(r"preempted at step (\d+)", out).group(1)) for out, _ in outs}
  saved = [int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(stopped) == 1 and saved == list(stopped) and 0 < saved[0] < 100000


def test_prefetched_batches_arrive_in_order_and_training_is_bitwise_the_same():
  from vivit_knn.train import trainer
  results = {}
  for prefetch in (0, 2):
    config = tiny_config(num_train_steps=5, prefetch_batches=prefetch, eval_at_end=False,
                         checkpoint_every_steps=5)
    with tempfile.TemporaryDirectory() as work:
      state = trainer.train(config, work)["state"]
      results[prefetch] = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]
  for a, b in zip(results[0], results[2]):
    np.testing.assert_array_equal(a, b)


def test_a_failing_producer_raises_in_the_loop_and_the_thread_ends():
  import threading

  from vivit_knn.train.prefetch import DevicePrefetcher
  from vivit_knn.train.sharding import make_mesh

  def batches():
    for i in range(3):
      yield {"inputs": np.full((2, 3), i, np.float32)}
    raise OSError("the input pipeline failed")

  mesh = make_mesh(tiny_config().mesh, jax.devices()[:1])
  before = threading.active_count()
  prefetcher = DevicePrefetcher(batches(), mesh, size=2)
  assert [int(next(prefetcher)["inputs"][0, 0]) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(OSError, match="input pipeline failed"):
    next(prefetcher)
  prefetcher.close()
  assert threading.active_count() == before


def test_model_init_is_traced_at_most_twice_per_run(tmp_path, monkeypatch):
  from vivit_knn.train import trainer
  from vivit_knn.train.experiment import Experiment
  traces = []
  init_params = Experiment.init_params

  def counted(self, rng):
    traces.append(rng)
    return init_params(self, rng)

  monkeypatch.setattr(Experiment, "init_params", counted)
  config = tiny_config(num_train_steps=4, eval_at_end=True, checkpoint_every_steps=2)
  trainer.train(config, str(tmp_path / "run"))
  # One abstract trace for every shape and sharding, one to create the state.
  assert len(traces) == 2, len(traces)
  traces.clear()
  config.train.num_train_steps = 6
  trainer.train(config, str(tmp_path / "run"))  # a resume: the abstract state only
  assert len(traces) == 1, len(traces)


_RULES_OVERRIDE = r"""
import json, sys, jax
from tests.tiny import tiny_config
from vivit_knn.train import sharding
from vivit_knn.train.experiment import build_experiment

def layout(rules):
  config = tiny_config(global_batch_size=8)
  config.mesh.update(data=4, fsdp=1, tensor=2, fsdp_min_param_size=16, rules=rules)
  exp = build_experiment(config)
  state = exp.abstract_state()
  specs = {jax.tree_util.keystr(p): str(x.sharding.spec)
           for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
  mlp = [v for k, v in specs.items() if "Mlp" in k and "Dense_0" in k and "kernel" in k]
  x = jax.ShapeDtypeStruct((8,) + tuple(exp.dataset.info.input_shape), jax.numpy.float32)
  forward = jax.jit(lambda p, x: exp.model.apply({"params": p}, x)[0])
  with sharding.layout(exp.mesh, config.mesh):
    text = forward.lower(state.params, x).as_text()
  constraints = [l for l in text.splitlines() if "sharding_constraint" in l]
  return {"mlp_kernel": mlp[0], "constraints": len(constraints),
          "tensor_constraints": sum('"tensor"' in l for l in constraints)}

print(json.dumps({"default": layout(()),
                  "override": layout((("embed", "fsdp"), ("heads", None), ("mlp", None)))}))
"""


def test_mesh_rules_lay_out_parameters_and_activations_alike():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  out = json.loads(run_python(["-c", _RULES_OVERRIDE], env).stdout.strip().splitlines()[-1])
  default, override = out["default"], out["override"]
  assert "tensor" in default["mlp_kernel"] and default["tensor_constraints"] >= 1, default
  # Overridden: neither the MLP weight nor the MLP activation is split over `tensor` any more,
  # while the batch constraints are still there.
  assert "tensor" not in override["mlp_kernel"], override
  assert override["constraints"] >= 1 and override["tensor_constraints"] == 0, override


def test_the_rules_must_name_mesh_axes():
  from vivit_knn import config as config_lib
  config = tiny_config()
  config.mesh.rules = (("mlp", "model"),)
  with pytest.raises(ValueError, match="mesh.rules maps 'mlp' to unknown mesh axis 'model'"):
    config_lib.validate(config)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run with checkpoints at steps 2 and 4."""
  work = tmp_path_factory.mktemp("restore_faults") / "run"
  run_python(["-m", "vivit_knn.main"] + TINY + [
      f"--workdir={work}", "--config.train.num_train_steps=4",
      "--config.train.checkpoint_every_steps=2"])
  return work


def _steps(work, folder="checkpoints"):
  path = work / folder
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


@pytest.mark.parametrize("fault,code,message", [
    ("storage_error_reading_step", 2, "could not be read after 3 tries"),
    ("memory_error_reading_step", 1, "unexpected MemoryError")])
def test_a_failed_read_stops_the_run_and_moves_nothing(trained, tmp_path, fault, code,
                                                       message):
  import shutil
  work = tmp_path / "run"
  shutil.copytree(trained, work)
  proc = run_python(["-m", "tests.faults", f"{fault}=4"] + TINY + [
      f"--workdir={work}", "--config.train.num_train_steps=6",
      "--config.train.checkpoint_every_steps=2"], check=False)
  assert proc.returncode == code, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert "falling back" not in proc.stderr
  # The newest step stays where it was, nothing is set aside, and no step is trained.
  assert _steps(work) == [2, 4] and _steps(work, "checkpoints_damaged") == []
