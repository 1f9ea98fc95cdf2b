"""Train-step benchmark: step time, clips/s, model TFLOP/s, MFU and memory for one config.

  python benchmarks/train_step.py --config=configs/ucf101_dk.py --batch_per_device=2
  python benchmarks/train_step.py --config=configs/synthetic_dk.py --compare_cpu_devices=8

The data is synthetic clips of the config's shape (no dataset needed). Model FLOPs
are 3x the forward pass's XLA cost (forward + backward, the usual MFU convention),
counted for one clip; MFU = achieved model FLOP/s / (`--peak_tflops` x devices).
`--compare_cpu_devices=N` runs the step on N forced CPU devices and on 1 device in
two subprocesses with the same per-device batch and prints the per-device time ratio
(N-device step time / N, over the 1-device step time: 1.0 means no sharding overhead
on the same physical cores).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to benchmark.")
_BATCH = flags.DEFINE_integer("batch_per_device", 2, "Clips per device per step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of one device in the compute "
                           "dtype (e.g. 989 for H100 bf16 dense); 0 = look up a known device.")
_COMPARE = flags.DEFINE_integer("compare_cpu_devices", 0, "If > 0: compare N forced CPU "
                                "devices with 1 device (subprocesses).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON line (used by --compare_cpu_devices).")

# Dense bf16 peak TFLOP/s per device (vendor figures).
KNOWN_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5": 459.0, "TPU v6 lite": 918.0}


def _peak_tflops(device) -> float:
  if _PEAK.value > 0:
    return _PEAK.value
  kind = getattr(device, "device_kind", "")
  for name, peak in KNOWN_PEAKS.items():
    if name.lower() in kind.lower():
      return peak
  return 0.0


def _synthetic_dataset_config(config):
  """The synthetic dataset at the config's clip shape, so any config runs without data."""
  from vivit_knn.data.registry import DATASET_DEFAULTS
  data = DATASET_DEFAULTS["synthetic"]()
  data.num_frames = config.dataset.num_frames
  data.image_size = config.dataset.image_size
  data.num_train = max(64, _BATCH.value * 64)
  data.num_eval = 16
  return data


def measure(config) -> dict:
  """Compiles and times the train step of `config` on all local devices."""
  import jax
  import numpy as np
  from vivit_knn.train import sharding
  from vivit_knn.train.experiment import build_experiment
  from vivit_knn.train.steps import make_train_step

  config.dataset = _synthetic_dataset_config(config)
  n = jax.device_count()
  config.train.global_batch_size = _BATCH.value * n
  config.train.num_train_steps = 10_000
  config.optimizer.warmup_steps = 1
  exp = build_experiment(config)
  state = exp.init_state(jax.random.key(0))
  step = make_train_step(exp)
  batch = sharding.shard_batch(next(exp.dataset.train_batches(config.train.global_batch_size)),
                               exp.mesh)
  rng = jax.random.key(1)

  one = exp.dummy_input()
  forward = jax.jit(lambda p, x: exp.model.apply({"params": p}, x, train=False)[0])
  cost = forward.lower(jax.eval_shape(exp.init_params, rng), one).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  model_flops_per_clip = 3.0 * float(cost.get("flops", 0.0))

  t0 = time.perf_counter()
  state, m = step(state, batch, rng)
  jax.block_until_ready(m["loss"])
  compile_s = time.perf_counter() - t0
  for _ in range(_WARMUP.value):
    state, m = step(state, batch, rng)
  jax.block_until_ready(m["loss"])
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, m = step(state, batch, rng)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)

  step_s = statistics.median(times)
  clips = config.train.global_batch_size
  tflops = model_flops_per_clip * clips / step_s / 1e12
  device = jax.devices()[0]
  peak = _peak_tflops(device)
  stats = device.memory_stats() or {}
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  return {
      "config": config.experiment_name, "device": device.device_kind, "devices": n,
      "dtype": config.model.dtype, "params_M": params / 1e6, "clips_per_step": clips,
      "compile_s": compile_s, "step_ms_median": step_s * 1e3,
      "step_ms_min": min(times) * 1e3, "clips_per_s": clips / step_s,
      "model_gflops_per_clip": model_flops_per_clip / 1e9, "model_tflops_per_s": tflops,
      "mfu": (tflops / (peak * n)) if peak else None,
      "peak_memory_gb": stats.get("peak_bytes_in_use", 0) / 1e9 or None,
  }


def _print(r: dict) -> None:
  mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (pass --peak_tflops)"
  mem = f"{r['peak_memory_gb']:.2f} GB" if r["peak_memory_gb"] else "n/a"
  print(f"{r['config']} on {r['devices']} x {r['device']} ({r['dtype']}), "
        f"{r['params_M']:.1f}M params, {r['clips_per_step']} clips/step")
  print(f"  step {r['step_ms_median']:.1f} ms (median, min {r['step_ms_min']:.1f}), "
        f"{r['clips_per_s']:.2f} clips/s, compile {r['compile_s']:.1f} s")
  print(f"  model {r['model_gflops_per_clip']:.1f} GFLOP/clip (fwd+bwd), "
        f"{r['model_tflops_per_s']:.3f} TFLOP/s, MFU {mfu}, peak memory {mem}")


def _compare(n: int) -> None:
  """Runs this script on N forced CPU devices and on 1, and prints the per-device ratio."""
  argv = [a for a in sys.argv[1:] if not a.startswith("--compare_cpu_devices")]
  results = {}
  for devices in (1, n):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = subprocess.run([sys.executable, __file__, *argv, "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    results[devices] = json.loads(out.strip().splitlines()[-1])
    _print(results[devices])
  per_device = results[n]["step_ms_median"] / n
  ratio = per_device / results[1]["step_ms_median"]
  print(f"per-device step time: {n} devices {per_device:.1f} ms vs 1 device "
        f"{results[1]['step_ms_median']:.1f} ms -> ratio {ratio:.2f} (same physical cores)")


def main(argv) -> None:
  del argv
  if _COMPARE.value:
    _compare(_COMPARE.value)
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  result = measure(_CONFIG.value)
  if _JSON.value:
    print(json.dumps(result))
  else:
    _print(result)


if __name__ == "__main__":
  app.run(main)
