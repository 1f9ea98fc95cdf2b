"""One run on one accelerator: attention paths side by side, then two bf16 training steps.

  python benchmarks/device_suite.py            # full shapes, sized for < 8 minutes on one GPU
  python benchmarks/device_suite.py --smoke    # tiny shapes, about a minute on CPU

On the CPU backend `--smoke` is the default (`--full` forces the full shapes).

Part 1 times the attention core (logits, softmax, weighted sum; no projections)
of dense and k-NN (k = 2n/3) attention at N = 197, 785 and 3137 tokens (ViViT-B
frames, 8-frame and 32-frame clips) through the three evaluation paths of
`AttentionSpec.impl`: 'xla' (one piece), 'blocked' (query blocks with a
recomputing backward pass) and the fused kernel ('pallas'; on CPU the Pallas
interpreter, 'pallas_interpret', and only in `--smoke`, since it is slow). Every
cell reports the forward and the forward+backward time (median and minimum of
interleaved rounds) and the compiled forward+backward's temporary memory; the
blocked and kernel outputs are checked against the 'xla' output (max abs diff
printed). A cell the kernel cannot run (shape too large for its on-chip blocks,
no kernel for the backend) prints "n/a" and the reason.

Part 2 times one training step of ViViT-B/16x2 FE (`configs/ucf101_vivit_fe.py`)
and Dk-ViViT-B (`configs/ucf101_dk.py`) in bfloat16 on synthetic clips, through
`benchmarks/train_step.py`, each in its own process so that the device's
`peak_bytes_in_use` is that row's own (on CPU, which has no memory statistics,
the compiled step's `memory_analysis` estimate is printed instead, and the rows
run in this process). MFU = model
FLOPs (3x the forward pass's XLA count) per second / the device's peak
(`--peak_tflops`, or a known figure for the device).

`--json` adds one final JSON line with every figure (used by the smoke test).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

FULL_TOKENS = (197, 785, 3137)
SMOKE_TOKENS = (17, 33)
KINDS = ("dense", "knn")
PATHS = ("xla", "blocked", "kernel")
KNN_FRACTION = 2 / 3
TRAIN_CONFIGS = (("ViViT-B FE", "configs/ucf101_vivit_fe.py"),
                 ("Dk-ViViT-B", "configs/ucf101_dk.py"))
# Config overrides for every training row, and the extra ones of --smoke (a tiny model).
TRAIN_OVERRIDES = {"model.dtype": "bfloat16", "init_from.required": False}
SMOKE_OVERRIDES = {"dataset.image_size": 32, "dataset.num_frames": 4, "model.hidden_size": 32,
                   "model.num_heads": 2, "model.mlp_dim": 64,
                   "model.spatial_transformer.num_layers": 1,
                   "model.temporal_transformer.num_layers": 1}


def kernel_impl(backend: str, num_keys: int, head_dim: int, smoke: bool):
  """(impl, None) for the kernel column, or (None, reason) when it cannot run."""
  from vivit_knn.models import knn_kernel
  if backend in knn_kernel.Q_BLOCK:
    if knn_kernel.supports(backend, num_keys, head_dim):
      return "pallas", None
    return None, f"kernel blocks do not fit N={num_keys}, d={head_dim} on {backend}"
  if smoke:
    return "pallas_interpret", None
  return None, f"no kernel on {backend} (interpreter only with --smoke)"


def _interleaved(fns: Dict[str, Any], reps: int) -> Dict[str, List[float]]:
  """{name: seconds per call} over `reps` rounds that call every fn once."""
  import jax
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return times


def attention_cell(tokens: int, kind: str, shape: Dict[str, int], dtype: str, reps: int,
                   smoke: bool) -> Dict[str, Any]:
  """Times the three paths for one (N, kind) and checks them against the 'xla' output.

  Returns `{'tokens', 'kind', 'k', paths: {path: {...} or {'na': reason}}}` with
  forward and forward+backward medians and minima (ms), temporary bytes of the
  compiled forward+backward and the max abs difference from 'xla'.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from vivit_knn.models import attention

  backend = jax.default_backend()
  b, h, d = shape["batch"], shape["heads"], shape["depth"]
  knn_k = KNN_FRACTION if kind == "knn" else None
  k = attention.resolve_knn_k(knn_k, tokens) if kind == "knn" else tokens
  rng = np.random.default_rng(tokens)
  q, key, v, cot = (jnp.asarray(rng.standard_normal((b, tokens, h, d), dtype=np.float32),
                                dtype=dtype) for _ in range(4))
  impls = {"xla": ("xla", None), "blocked": ("blocked", None),
           "kernel": kernel_impl(backend, tokens, d, smoke)}
  fwd, grad, out = {}, {}, {"tokens": tokens, "kind": kind, "k": k, "paths": {}}
  for path, (impl, reason) in impls.items():
    if impl is None:
      out["paths"][path] = {"na": reason}
      continue
    spec = attention.AttentionSpec(kind=kind, knn_k=knn_k, impl=impl)
    f = jax.jit(lambda q, k_, v, spec=spec: attention.dot_product_attention(q, k_, v, spec))
    g = jax.jit(jax.grad(lambda q, k_, v, spec=spec: jnp.vdot(
        attention.dot_product_attention(q, k_, v, spec).astype(jnp.float32),
        cot.astype(jnp.float32)), argnums=(0, 1, 2)))
    try:
      temp = g.lower(q, key, v).compile().memory_analysis().temp_size_in_bytes
      value = np.asarray(jax.block_until_ready(f(q, key, v)), np.float32)
      jax.block_until_ready(g(q, key, v))
    except Exception as err:  # noqa: BLE001  (one failing path must not end the device run)
      if path == "xla":
        raise  # the reference every other path is checked against
      first = (str(err).splitlines() or [""])[0][:90]
      out["paths"][path] = {"na": f"{impl} failed: {type(err).__name__}: {first}"}
      continue
    out["paths"][path] = {"impl": impl, "temp_bytes": int(temp), "value": value}
    fwd[path] = lambda f=f: f(q, key, v)
    grad[path] = lambda g=g: g(q, key, v)
  reference = out["paths"]["xla"]["value"]
  for name, times in (("fwd", _interleaved(fwd, reps)), ("fwd_bwd", _interleaved(grad, reps))):
    for path, ts in times.items():
      cell = out["paths"][path]
      cell[f"{name}_ms_median"] = 1e3 * statistics.median(ts)
      cell[f"{name}_ms_min"] = 1e3 * min(ts)
  for cell in out["paths"].values():
    if "value" in cell:
      cell["max_abs_diff"] = float(np.max(np.abs(cell.pop("value") - reference)))
  return out


def print_attention(cells: List[Dict[str, Any]], shape: Dict[str, int], dtype: str) -> None:
  """Prints the attention table: one row per (N, kind), the three paths side by side."""
  print(f"attention core, B={shape['batch']} H={shape['heads']} d={shape['depth']}, {dtype}; "
        "ms = median / min of interleaved rounds; temp = compiled fwd+bwd temporaries; "
        "diff = max |out - xla out|")
  head = "".join(f"{p + ' fwd':>16}{p + ' fwd+bwd':>20}{'temp MB':>9}{'diff':>9}" for p in PATHS)
  print(f"  {'N':>5} {'kind':<6}{head}")
  for c in cells:
    row = f"  {c['tokens']:>5} {c['kind']:<6}"
    for path in PATHS:
      cell = c["paths"][path]
      if "na" in cell:
        row += f"{'n/a':>16}{'':>20}{'':>9}{'':>9}"
        continue
      row += (f"{cell['fwd_ms_median']:>8.2f} /{cell['fwd_ms_min']:>6.2f}"
              f"{cell['fwd_bwd_ms_median']:>12.2f} /{cell['fwd_bwd_ms_min']:>6.2f}"
              f"{cell['temp_bytes'] / 1e6:>9.1f}{cell['max_abs_diff']:>9.1e}")
    print(row)
  for c in cells:
    for path in PATHS:
      if "na" in c["paths"][path]:
        print(f"  n/a: {path} at N={c['tokens']} {c['kind']}: {c['paths'][path]['na']}")


def _load_config(config_path: str, overrides: Dict[str, Any]):
  """The config of `config_path` (relative to the repository) with dotted-key `overrides`."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, config_path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def train_row(label: str, config_path: str, smoke: bool, batch_per_device: int, steps: int,
              peak_tflops: float, isolate: bool) -> Dict[str, Any]:
  """One training-step row, measured by `benchmarks/train_step.py`.

  With `isolate` it runs in its own process (its CLI), so that the device's
  `peak_bytes_in_use` belongs to this row alone; otherwise (CPU: no memory
  statistics, the compiled estimate is used) in this process.
  """
  overrides = {**TRAIN_OVERRIDES, **(SMOKE_OVERRIDES if smoke else {})}
  if not isolate:
    from benchmarks import train_step
    row = train_step.measure(_load_config(config_path, overrides), batch_per_device, steps,
                             warmup=1, peak_override=peak_tflops)
    row["label"] = label
    return row
  argv = [sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"),
          f"--config={os.path.join(ROOT, config_path)}",
          *(f"--config.{key}={value}" for key, value in overrides.items()),
          f"--batch_per_device={batch_per_device}", f"--steps={steps}", "--warmup=1",
          f"--peak_tflops={peak_tflops}", "--json"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise RuntimeError(f"benchmarks/train_step.py failed: {tail}")
  row = json.loads(proc.stdout.strip().splitlines()[-1])
  row["label"] = label
  return row


def print_train(rows: List[Dict[str, Any]]) -> None:
  """Prints the training-step rows."""
  print("training step (synthetic clips, bf16 compute, f32 params; median / min of timed steps)")
  print(f"  {'model':<12}{'params M':>9}{'clips':>6}{'step ms':>18}{'clips/s':>9}"
        f"{'GFLOP/clip':>11}{'MFU':>8}{'peak mem MB':>12}  memory source")
  for r in rows:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    print(f"  {r['label']:<12}{r['params_M']:>9.1f}{r['clips_per_step']:>6}"
          f"{r['step_ms_median']:>10.1f} /{r['step_ms_min']:>6.1f}{r['clips_per_s']:>9.2f}"
          f"{r['model_gflops_per_clip']:>11.4g}{mfu:>8}{1e3 * r['peak_memory_gb']:>12.1f}  "
          f"{r['peak_memory_source']}")
  if rows and rows[0]["mfu"] is None:
    print("  MFU n/a: no known peak for this device (pass --peak_tflops)")


def main(argv: Optional[List[str]] = None) -> None:
  """Parses flags, runs both parts and prints their tables."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny shapes and models (a CPU check that every row runs; the "
                      "default on CPU)")
  parser.add_argument("--full", action="store_true",
                      help="the full shapes even on CPU (slow: minutes per cell)")
  parser.add_argument("--reps", type=int, default=None,
                      help="interleaved rounds per attention cell (default 10; 3 with --smoke)")
  parser.add_argument("--batch", type=int, default=None, help="attention batch (default 4)")
  parser.add_argument("--train_batch_per_device", type=int, default=None,
                      help="clips per device in the training rows (default 8; 2 with --smoke)")
  parser.add_argument("--train_steps", type=int, default=None,
                      help="timed training steps (default 10; 2 with --smoke)")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="peak bf16 TFLOP/s of the device (0 = a known figure, if any)")
  parser.add_argument("--skip_train", action="store_true", help="attention part only")
  parser.add_argument("--json", action="store_true", help="also print one JSON line")
  args = parser.parse_args(argv)
  for name in ("reps", "batch", "train_batch_per_device", "train_steps"):
    value = getattr(args, name)
    if value is not None and value < 1:
      parser.error(f"--{name} must be >= 1, got {value}")
  if args.smoke and args.full:
    parser.error("pass either --smoke or --full, not both")
  if args.peak_tflops < 0 or not math.isfinite(args.peak_tflops):
    parser.error(f"--peak_tflops must be >= 0, got {args.peak_tflops}")

  # On a GPU, JAX would otherwise reserve 75% of the memory in this process and leave
  # too little for the training rows' own processes.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax
  backend = jax.default_backend()
  smoke = args.smoke or (backend == "cpu" and not args.full)
  tokens = SMOKE_TOKENS if smoke else FULL_TOKENS
  shape = ({"batch": args.batch or 1, "heads": 2, "depth": 8} if smoke
           else {"batch": args.batch or 4, "heads": 12, "depth": 64})
  dtype = "float32" if backend == "cpu" else "bfloat16"
  reps = args.reps or (3 if smoke else 10)
  device = jax.devices()[0]
  print(f"jax {jax.__version__}, {jax.device_count()} x {device.device_kind} ({backend}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs), load average "
        f"{os.getloadavg()[0]:.2f}{', smoke shapes' if smoke else ''}")
  t0 = time.perf_counter()
  cells = [attention_cell(n, kind, shape, dtype, reps, smoke) for n in tokens for kind in KINDS]
  print_attention(cells, shape, dtype)
  rows, failed = [], []
  if not args.skip_train:
    for label, path in TRAIN_CONFIGS:
      try:
        rows.append(train_row(label, path, smoke,
                              args.train_batch_per_device or (2 if smoke else 8),
                              args.train_steps or (2 if smoke else 10), args.peak_tflops,
                              isolate=backend != "cpu"))
      except (RuntimeError, ValueError) as err:  # report it, then run the other row
        failed.append(f"{label}: {(str(err).splitlines() or [''])[0]}")
    print_train(rows)
    for line in failed:
      print(f"  failed: {line}")
  print(f"suite time {time.perf_counter() - t0:.1f} s, load average {os.getloadavg()[0]:.2f}")
  if args.json:
    print(json.dumps({"backend": backend, "device": device.device_kind, "dtype": dtype,
                      "shape": shape, "attention": cells, "train": rows, "failed": failed}))
  if failed:
    raise SystemExit(1)


if __name__ == "__main__":
  main()
