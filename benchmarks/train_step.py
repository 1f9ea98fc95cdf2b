"""Train-step benchmark: step time, clips/s, MFU, memory, collectives and device overhead.

  python benchmarks/train_step.py --config=configs/ucf101_dk.py --batch_per_device=2
  python benchmarks/train_step.py --config=configs/synthetic_dk.py --compare_cpu_devices=8
  python benchmarks/train_step.py --config=configs/synthetic_tiny.py --collectives=8

The data is synthetic clips of the config's shape (no dataset needed). Model FLOPs
are 3x the forward pass's XLA cost (forward + backward, the usual MFU convention),
counted for one clip on the loop-free attention path (XLA counts a loop body
once); MFU = achieved model FLOP/s / (`--peak_tflops` x devices).

`--collectives=N` compiles the step on N devices (forcing N CPU devices in a
subprocess when this process has another count) for three meshes, data parallel
(N x 1 x 1), FSDP (1 x N x 1) and tensor parallel (1 x 1 x N) (or those named
by `--collective_meshes`), and prints each
compiled program's collectives (kind, count, bytes per step on one device; see
`benchmarks/collectives.py`) against the ideal: one gradient all-reduce of the
parameter bytes for data parallelism; an all-gather of the FSDP-sharded
parameters plus a reduce-scatter of their gradients (and an all-reduce of the
replicated rest) for FSDP (XLA:CPU emits all-reduces instead of reduce-scatters;
the printed gradient reduction, all-reduce plus reduce-scatter bytes, is the
figure to compare with the parameter bytes); for tensor parallelism about 4 activation all-reduces
per attention block (2 forward, 2 backward), and no gradient traffic.

`--compare_cpu_devices=N` runs in one process with N forced CPU devices: the step
on a 1-device mesh and on the N-device mesh with the same per-device batch, in
interleaved rounds, plus the same forward+backward with no collective at all
(`shard_map`, every device keeps its own gradients) as a control, and the
gradient all-reduce alone (a `psum` of parameter-sized buffers). It prints the
per-device time ratio (N-device time / N over the 1-device time; 1.0 = no
overhead on the same cores), medians and minima, the process's CPU time, the
load average, and load-independent figures of each compiled step (per-device
FLOPs, bytes accessed, HLO instructions, collectives). See benchmarks/README.md
for what these show on a 2-core machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import collectives as collectives_lib  # noqa: E402  (after the path setup)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to benchmark.")
_BATCH = flags.DEFINE_integer("batch_per_device", 2, "Clips per device (per data shard) "
                              "per step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (rounds with --compare_cpu_devices).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of one device in the compute "
                           "dtype (e.g. 989 for H100 bf16 dense); 0 = look up a known device.")
_COMPARE = flags.DEFINE_integer("compare_cpu_devices", 0, "If > 0: compare N forced CPU "
                                "devices with 1 device (one subprocess, interleaved rounds).")
_COLLECTIVES = flags.DEFINE_integer("collectives", 0, "If > 0: count the collectives of the "
                                    "compiled step on N devices for the data-parallel, FSDP "
                                    "and tensor meshes.")
_MESHES = flags.DEFINE_list("collective_meshes", "data,fsdp,tensor", "Meshes for "
                            "--collectives: any of data, fsdp, tensor.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON line.")

# Dense bf16 peak TFLOP/s per device (vendor figures).
KNOWN_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5": 459.0, "TPU v6 lite": 918.0}

# Marks the subprocess that already runs on forced CPU devices (no second re-run).
_CHILD_ENV = "VIVIT_KNN_BENCH_CHILD"

# Mesh name -> (data, fsdp, tensor); 0 or -1 takes the remaining devices.
MESHES = {"data": (-1, 1, 1), "fsdp": (1, 0, 1), "tensor": (1, 1, 0)}


def peak_tflops(device, override: float = 0.0) -> float:
  """Peak dense TFLOP/s of `device`: `override` when > 0, else a known figure, else 0."""
  if override > 0:
    return override
  kind = getattr(device, "device_kind", "")
  for name, peak in KNOWN_PEAKS.items():
    if name.lower() in kind.lower():
      return peak
  return 0.0


def synthetic_dataset_config(config, batch_per_device: int):
  """The synthetic dataset at the config's clip shape, so any config runs without data."""
  from vivit_knn.data.registry import DATASET_DEFAULTS
  data = DATASET_DEFAULTS["synthetic"]()
  data.num_frames = config.dataset.num_frames
  data.image_size = config.dataset.image_size
  data.num_train = max(64, batch_per_device * 64)
  data.num_eval = 16
  return data


@dataclasses.dataclass
class Bench:
  """A built train step and its inputs: `step(state, batch, rng) -> (state, metrics)`."""

  exp: Any
  state: Any
  step: Callable
  batch: Dict
  rng: Any


def prepare(config, batch_per_device: int, devices: Optional[Sequence] = None,
            mesh: Optional[Sequence[int]] = None, materialize: bool = True) -> Bench:
  """Builds the experiment of `config` on `devices` with synthetic data and one sharded batch.

  Args:
    config: an experiment config (modified in place: dataset, batch, steps, mesh).
    batch_per_device: clips per data-parallel shard.
    devices: the devices of the mesh (default: all).
    mesh: `(data, fsdp, tensor)`; a 0 takes all remaining devices, -1 likewise for
      data (default: the config's mesh).
    materialize: False gives an abstract state and batch (shapes, dtypes and
      shardings only): enough to compile, nothing allocated.
  """
  import jax
  from vivit_knn.train import sharding
  from vivit_knn.train.experiment import build_experiment
  from vivit_knn.train.steps import make_train_step

  devices = list(devices if devices is not None else jax.devices())
  if mesh is not None:
    data, fsdp, tensor = mesh
    n = len(devices)
    fsdp = fsdp or n // (max(data, 1) * tensor)
    tensor = tensor or n // (max(data, 1) * fsdp)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
  config.dataset = synthetic_dataset_config(config, batch_per_device)
  probe = sharding.make_mesh(config.mesh, devices)
  config.train.global_batch_size = batch_per_device * sharding.data_parallel_size(probe)
  config.eval.global_batch_size = config.train.global_batch_size
  config.train.num_train_steps = 10_000
  exp = build_experiment(config, devices)
  host_batch = next(exp.dataset.train_batches(config.train.global_batch_size))
  if materialize:
    state = exp.init_state(jax.random.key(0))
    batch = sharding.shard_batch(host_batch, exp.mesh)
  else:
    state = exp.abstract_state()
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(exp.mesh))
             for k, v in host_batch.items()}
  return Bench(exp, state, make_train_step(exp), batch, jax.random.key(1))


def compile_step(bench: Bench):
  """The compiled program of the train step (for its HLO text and memory analysis)."""
  return bench.step.lower(bench.state, bench.batch, bench.rng).compile()


def model_flops_per_clip(exp) -> float:
  """3x the XLA FLOPs of one clip's forward pass (loop-free attention paths)."""
  import jax
  from vivit_knn.models import attention
  forward = jax.jit(lambda p, x: exp.model.apply({"params": p}, x, train=False)[0])
  with attention.one_piece_paths():
    cost = forward.lower(jax.eval_shape(exp.init_params, jax.random.key(0)),
                         exp.dummy_input()).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return 3.0 * float(cost.get("flops", 0.0))


def peak_memory(bench: Bench):
  """(bytes, source): the device's peak bytes in use, else the compiled step's estimate."""
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  if stats.get("peak_bytes_in_use"):
    return int(stats["peak_bytes_in_use"]), "memory_stats peak_bytes_in_use"
  mem = compile_step(bench).memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
           - mem.alias_size_in_bytes)
  return int(total), "compiled memory_analysis (arguments + outputs + temporaries)"


def time_steps(bench: Bench, steps: int, warmup: int) -> List[float]:
  """Seconds of `steps` timed steps after one compiling step and `warmup` more."""
  import jax
  state = bench.state
  for _ in range(1 + warmup):
    state, m = bench.step(state, bench.batch, bench.rng)
  jax.block_until_ready(m["loss"])
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = bench.step(state, bench.batch, bench.rng)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
  bench.state = state
  return times


def measure(config, batch_per_device: int, steps: int, warmup: int,
            peak_override: float = 0.0) -> Dict[str, Any]:
  """Compiles and times the train step of `config` on all local devices."""
  import jax
  import numpy as np
  bench = prepare(config, batch_per_device)
  flops = model_flops_per_clip(bench.exp)
  t0 = time.perf_counter()
  times = time_steps(bench, steps, warmup)
  compile_s = time.perf_counter() - t0 - sum(times)
  step_s = statistics.median(times)
  clips = config.train.global_batch_size
  n = jax.device_count()
  tflops = flops * clips / step_s / 1e12
  device = jax.devices()[0]
  peak = peak_tflops(device, peak_override)
  mem, mem_source = peak_memory(bench)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(bench.state.params))
  return {
      "config": config.experiment_name, "device": device.device_kind, "devices": n,
      "dtype": config.model.dtype, "params_M": params / 1e6, "clips_per_step": clips,
      "compile_and_warmup_s": compile_s, "step_ms_median": step_s * 1e3,
      "step_ms_min": min(times) * 1e3, "clips_per_s": clips / step_s,
      "model_gflops_per_clip": flops / 1e9, "model_tflops_per_s": tflops,
      "mfu": (tflops / (peak * n)) if peak else None,
      "peak_memory_gb": mem / 1e9, "peak_memory_source": mem_source,
  }


def print_measurement(r: Dict[str, Any]) -> None:
  """Prints one `measure` result."""
  mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (pass --peak_tflops)"
  print(f"{r['config']} on {r['devices']} x {r['device']} ({r['dtype']}), "
        f"{r['params_M']:.1f}M params, {r['clips_per_step']} clips/step")
  print(f"  step {r['step_ms_median']:.1f} ms (median, min {r['step_ms_min']:.1f}), "
        f"{r['clips_per_s']:.2f} clips/s, compile+warmup {r['compile_and_warmup_s']:.1f} s")
  print(f"  model {r['model_gflops_per_clip']:.1f} GFLOP/clip (fwd+bwd), "
        f"{r['model_tflops_per_s']:.3f} TFLOP/s, MFU {mfu}, peak memory "
        f"{r['peak_memory_gb']:.2f} GB ({r['peak_memory_source']})")


# --------------------------------------------------------------------------------------
# Collectives.


def _param_bytes(exp, state) -> Dict[str, int]:
  """Bytes of all parameters, and of those sharded on the mesh (any non-None axis)."""
  import jax
  import numpy as np
  shardings = exp.state_shardings().params
  total = sharded = 0
  for leaf, sh in zip(jax.tree.leaves(state.params), jax.tree.leaves(shardings)):
    nbytes = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
    total += nbytes
    if any(axis is not None for axis in sh.spec):
      sharded += nbytes
  return {"param": total, "sharded": sharded}


def _attention_blocks(state) -> int:
  """Number of attention layers (parameters named `.../out/kernel`)."""
  import jax
  from vivit_knn.weights.tree import key_name
  return sum(key_name(path).endswith("out/kernel")
             for path, _ in jax.tree_util.tree_leaves_with_path(state.params))


def count_step_collectives(config_factory: Callable, batch_per_device: int,
                           meshes: Sequence[str] = tuple(MESHES)) -> Dict[str, Any]:
  """Collectives of the compiled train step for each named mesh of `MESHES`, with the ideal.

  Args:
    config_factory: returns a fresh config (each mesh modifies its own copy).
    batch_per_device: clips per data-parallel shard.
    meshes: names of `MESHES` to compile.

  Returns:
    `{'devices': n, 'meshes': [...], name: {'mesh': [d, f, t], 'kinds':
    summarize(...), 'param_bytes', 'sharded_param_bytes', 'attention_blocks',
    'ideal': {kind: bytes}}}`.

  Raises:
    ValueError: for a mesh name not in `MESHES`.
  """
  import jax
  for name in meshes:
    if name not in MESHES:
      raise ValueError(f"--collective_meshes: unknown mesh {name!r}; choose from {tuple(MESHES)}")
  out = {"devices": jax.device_count(), "meshes": list(meshes)}
  for name in meshes:
    shape = MESHES[name]
    bench = prepare(config_factory(), batch_per_device, mesh=shape, materialize=False)
    text = compile_step(bench).as_text()
    kinds = collectives_lib.summarize(collectives_lib.count_collectives(text))
    sizes = _param_bytes(bench.exp, bench.state)
    blocks = _attention_blocks(bench.state)
    if name == "data":
      ideal = {"all-reduce": sizes["param"]}
    elif name == "fsdp":
      ideal = {"all-gather": sizes["sharded"], "reduce-scatter": sizes["sharded"]}
    else:
      ideal = {"all-reduce count": 4 * blocks}
    m = bench.exp.mesh
    out[name] = {"mesh": [m.shape[a] for a in m.axis_names], "kinds": kinds,
                 "param_bytes": sizes["param"], "sharded_param_bytes": sizes["sharded"],
                 "attention_blocks": blocks, "ideal": ideal}
    del bench
  return out


def _fmt_bytes(n: float) -> str:
  for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n:.0f} B"


def print_collectives(result: Dict[str, Any]) -> None:
  """Prints the `count_step_collectives` tables."""
  for name in result["meshes"]:
    r = result[name]
    d, f, t = r["mesh"]
    print(f"{name} mesh (data={d}, fsdp={f}, tensor={t}) on {result['devices']} devices: "
          f"params {_fmt_bytes(r['param_bytes'])}, sharded {_fmt_bytes(r['sharded_param_bytes'])}"
          f", {r['attention_blocks']} attention blocks")
    print(f"  {'kind':<20}{'count':>7}{'bytes/step':>13}{'ideal':>13}{'x ideal':>9}")
    for kind, row in r["kinds"].items():
      ideal = r["ideal"].get(kind)
      ideal_s = _fmt_bytes(ideal) if ideal is not None else "-"
      ratio = f"{row['bytes'] / ideal:.3f}" if ideal else "-"
      print(f"  {kind:<20}{row['count']:>7}{_fmt_bytes(row['bytes']):>13}{ideal_s:>13}"
            f"{ratio:>9}")
    if name in ("data", "fsdp"):
      reduced = r["kinds"]["all-reduce"]["bytes"] + r["kinds"]["reduce-scatter"]["bytes"]
      print(f"  gradient reduction (all-reduce + reduce-scatter): {_fmt_bytes(reduced)} = "
            f"{reduced / r['param_bytes']:.3f} x the parameter bytes (ideal 1.0)")
    if name == "fsdp" and not r["kinds"]["reduce-scatter"]["count"]:
      print("  (no reduce-scatter: this backend's compiler reduces FSDP gradients with "
            "all-reduce; the replicated small parameters are all-reduced in any case)")
    if "all-reduce count" in r["ideal"]:
      print(f"  ideal: about {r['ideal']['all-reduce count']} activation all-reduces "
            f"(2 forward + 2 backward per attention block), no gradient traffic")


# --------------------------------------------------------------------------------------
# N devices against 1 on the same cores.


def _local_grad_fn(bench: Bench):
  """Forward+backward of the step's loss where every device keeps its own gradients."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P
  from vivit_knn.train import losses
  from vivit_knn.train.sharding import BATCH_AXES

  exp = bench.exp

  def local(params, inputs, labels):
    def loss(p):
      logits, _ = exp.model.apply({"params": p}, inputs, train=False)
      return jnp.mean(losses.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1])))
    grads = jax.grad(loss)(params)
    return jax.tree.map(lambda g: g[None], grads)

  fn = jax.jit(jax.shard_map(local, mesh=exp.mesh, in_specs=(P(), P(BATCH_AXES), P(BATCH_AXES)),
                             out_specs=P(BATCH_AXES), check_vma=False))
  # A copy: the train step donates (deletes) the state's own buffers.
  params = jax.device_put(jax.device_get(bench.state.params),
                          jax.sharding.NamedSharding(exp.mesh, P()))
  return lambda: jax.block_until_ready(fn(params, bench.batch["inputs"], bench.batch["label"]))


def _all_reduce_fn(bench: Bench):
  """Only the gradient all-reduce: a psum of parameter-sized buffers over the data axes."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from vivit_knn.train.sharding import BATCH_AXES

  mesh = bench.exp.mesh
  n = int(mesh.shape["data"] * mesh.shape["fsdp"])
  stacked = jax.tree.map(lambda x: jax.numpy.zeros((n,) + x.shape, x.dtype), bench.state.params)
  stacked = jax.device_put(stacked, NamedSharding(mesh, P(BATCH_AXES)))
  fn = jax.jit(jax.shard_map(lambda g: jax.lax.psum(g, BATCH_AXES), mesh=mesh,
                             in_specs=P(BATCH_AXES), out_specs=P(BATCH_AXES), check_vma=False))
  return lambda: jax.block_until_ready(fn(stacked))


def program_stats(bench: Bench) -> Dict[str, float]:
  """Load-independent figures of one device's compiled step: FLOPs, bytes, ops, collectives.

  FLOPs and bytes accessed come from XLA's cost analysis of the loop-free attention
  path (XLA counts a loop body once); `instructions` counts the HLO instructions
  of the program as run (CPU attention loops included once).
  """
  import jax
  from vivit_knn.models import attention
  compiled = compile_step(bench)
  text = compiled.as_text()
  with attention.one_piece_paths():
    cost = compile_step(bench).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  coll = collectives_lib.summarize(collectives_lib.count_collectives(text))
  return {"param_arrays": len(jax.tree.leaves(bench.state.params)),
          "flops": float(cost.get("flops", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
          "instructions": sum(1 for line in text.splitlines() if " = " in line),
          "collective_ops": sum(row["count"] for row in coll.values()),
          "collective_bytes": sum(row["bytes"] for row in coll.values())}


def compare_devices(config_factory: Callable, n: int, batch_per_device: int, rounds: int,
                    warmup: int) -> Dict[str, Any]:
  """Per-device step time of `n` devices against 1 device, interleaved in one process.

  Returns medians and minima (ms) of the train step and of the collective-free
  control on 1 and on `n` devices, their per-device ratios, the same for the
  process's CPU time (all threads; less sensitive to other load than wall time),
  and the load average before and after.
  """
  import jax
  devices = jax.devices()
  if len(devices) < n:
    raise ValueError(f"--compare_cpu_devices={n} needs {n} devices, this process has "
                     f"{len(devices)}")
  load_before = os.getloadavg()
  benches = {1: prepare(config_factory(), batch_per_device, devices[:1], mesh=(-1, 1, 1)),
             n: prepare(config_factory(), batch_per_device, devices[:n], mesh=(-1, 1, 1))}
  programs = {str(d): program_stats(bench) for d, bench in benches.items()}
  calls = {}
  for d, bench in benches.items():
    holder = {"state": bench.state}

    def train(bench=bench, holder=holder):
      holder["state"], m = bench.step(holder["state"], bench.batch, bench.rng)
      jax.block_until_ready(m["loss"])

    calls[("train step", d)] = train
    calls[("no collectives", d)] = _local_grad_fn(bench)
    calls[("all-reduce only", d)] = _all_reduce_fn(bench)
  for fn in calls.values():
    for _ in range(1 + warmup):
      fn()
  times = {key: [] for key in calls}
  cpu = {key: [] for key in calls}
  for _ in range(rounds):
    for key, fn in calls.items():
      c0, t0 = time.process_time(), time.perf_counter()
      fn()
      times[key].append(time.perf_counter() - t0)
      cpu[key].append(time.process_time() - c0)
  result = {"devices": n, "rounds": rounds, "load_before": load_before,
            "load_after": os.getloadavg(), "threads": len(os.listdir("/proc/self/task"))
            if os.path.isdir("/proc/self/task") else None, "programs": programs, "rows": {}}
  for what in ("train step", "no collectives", "all-reduce only"):
    one, many = times[(what, 1)], times[(what, n)]
    result["rows"][what] = {
        "ms_1_median": 1e3 * statistics.median(one), "ms_1_min": 1e3 * min(one),
        "ms_n_median": 1e3 * statistics.median(many), "ms_n_min": 1e3 * min(many),
        "ratio_median": statistics.median(many) / n / statistics.median(one),
        "ratio_min": min(many) / n / min(one),
        "cpu_ms_1_median": 1e3 * statistics.median(cpu[(what, 1)]),
        "cpu_ms_n_median": 1e3 * statistics.median(cpu[(what, n)]),
        "cpu_ratio_median": (statistics.median(cpu[(what, n)]) / n
                             / statistics.median(cpu[(what, 1)]))}
  return result


def print_comparison(r: Dict[str, Any]) -> None:
  """Prints a `compare_devices` result."""
  n = r["devices"]
  print(f"{n} forced CPU devices vs 1, same per-device batch, {r['rounds']} interleaved rounds; "
        f"load average {r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after; "
        f"{r['threads']} threads in the process")
  one, many = r["programs"]["1"], r["programs"][str(n)]
  print(f"  one device's compiled step: {'1 dev':>12}{f'{n} dev':>12}{'ratio':>8}")
  for key in ("param_arrays", "flops", "bytes_accessed", "instructions", "collective_ops",
              "collective_bytes"):
    ratio = f"{many[key] / one[key]:.3f}" if one[key] else "-"
    fmt = ">12.4g" if key in ("flops", "bytes_accessed", "collective_bytes") else ">12,.0f"
    print(f"  {key:<28}{one[key]:{fmt}}{many[key]:{fmt}}{ratio:>8}")
  print(f"  {'program':<16}{'1 dev ms (med/min)':>20}{f'{n} dev ms (med/min)':>22}"
        f"{'per-device ratio (med/min)':>28}")
  for what, row in r["rows"].items():
    print(f"  {what:<16}{row['ms_1_median']:>11.1f} /{row['ms_1_min']:>7.1f}"
          f"{row['ms_n_median']:>13.1f} /{row['ms_n_min']:>7.1f}"
          f"{row['ratio_median']:>19.2f} /{row['ratio_min']:>7.2f}")
  print(f"  {'CPU time':<16}{'1 dev ms (median)':>20}{f'{n} dev ms (median)':>22}"
        f"{'per-device ratio (median)':>28}")
  for what, row in r["rows"].items():
    print(f"  {what:<16}{row['cpu_ms_1_median']:>20.1f}{row['cpu_ms_n_median']:>22.1f}"
          f"{row['cpu_ratio_median']:>28.2f}")


def _rerun_on_cpu_devices(n: int) -> None:
  """Runs this script again on `n` forced CPU devices and relays its output."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{_CHILD_ENV: "1"})
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={n}").strip()
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env=env,
                        check=False)
  if proc.returncode:
    raise SystemExit(proc.returncode)


def _fail(message: str) -> None:
  """Bad input: one line on stderr, exit status 2."""
  print(f"benchmarks/train_step.py: {message}", file=sys.stderr)
  raise SystemExit(2)


def main(argv) -> None:
  """Runs the mode the flags choose and prints its table (or one JSON line)."""
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if _CONFIG.value is None:
    _fail("--config is required (e.g. --config=configs/synthetic_dk.py)")
  for flag in (_BATCH, _STEPS):
    if flag.value < 1:
      _fail(f"--{flag.name} must be >= 1, got {flag.value}")
  if _WARMUP.value < 0:
    _fail(f"--warmup must be >= 0, got {_WARMUP.value}")
  if _COLLECTIVES.value and _COMPARE.value:
    _fail("pass either --collectives or --compare_cpu_devices, not both")
  n = _COLLECTIVES.value or _COMPARE.value
  if n < 0 or n == 1:
    _fail(f"--collectives / --compare_cpu_devices need N >= 2 devices, got {n}")
  unknown = [m for m in _MESHES.value if m not in MESHES]
  if unknown:
    _fail(f"--collective_meshes: unknown mesh {unknown[0]!r}; choose from {', '.join(MESHES)}")
  import jax
  if n and jax.device_count() < n and not os.environ.get(_CHILD_ENV):
    _rerun_on_cpu_devices(n)
    return
  base = _CONFIG.value
  factory = lambda: base.copy_and_resolve_references()  # noqa: E731
  try:
    if _COLLECTIVES.value:
      result = count_step_collectives(factory, _BATCH.value, _MESHES.value)
      show = print_collectives
    elif _COMPARE.value:
      result = compare_devices(factory, n, _BATCH.value, _STEPS.value, _WARMUP.value)
      show = print_comparison
    else:
      result = measure(factory(), _BATCH.value, _STEPS.value, _WARMUP.value, _PEAK.value)
      show = print_measurement
  except (ValueError, FileNotFoundError) as err:  # a config the experiment rejects
    _fail(str(err).splitlines()[0])
  if _JSON.value:
    print(json.dumps(result))
  else:
    show(result)


if __name__ == "__main__":
  app.run(main)
