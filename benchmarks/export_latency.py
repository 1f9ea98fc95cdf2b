"""Latency of one clip through the exported SavedModel against `--mode=infer`.

  python benchmarks/export_latency.py [--workdir=<trained run>] [--rounds=5]

Without `--workdir` it trains the README's main job briefly (`configs/synthetic_dk.py`,
20 steps) into a temporary folder. It exports the run once, writes one short H.264 clip,
then, round by round, interleaves:

* `saved_model`: a fresh process that imports TensorFlow only, loads the SavedModel and
  calls `serving_default` on one clip (uint8 frames); it reports the steady per-clip time
  (the median of 20 calls after one warm-up call) and the load and first-call times;
* `infer`: `python -m vivit_knn.main --mode=infer --video=<clip>`, the whole command's wall
  time (start-up, restore, decode, compile and predict), which is what a user of the project
  waits for one clip today.

Prints the median and minimum of each over the rounds, their ratio and the load average,
and the size of each artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import video_fixtures  # pylint: disable=g-import-not-at-top

CONFIG = "configs/synthetic_dk.py"

# argv: saved_model folder, clip .npy. Prints JSON: load, first call and steady per-clip seconds.
_SERVE = r"""
import importlib.abc, json, statistics, sys, time


class NoJax(importlib.abc.MetaPathFinder):
  # TensorFlow imports JAX where it is installed (optionally); a serving machine has none.
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib"):
      raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, NoJax())
start = time.perf_counter()
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
clip = tf.constant(np.load(sys.argv[2]))
loaded = time.perf_counter()
serve(frames=clip)["probabilities"].numpy()
first = time.perf_counter()
times = []
for _ in range(20):
  t = time.perf_counter()
  serve(frames=clip)["probabilities"].numpy()
  times.append(time.perf_counter() - t)
assert "jax" not in sys.modules
print(json.dumps({"load_s": loaded - start, "first_call_s": first - loaded,
                  "per_clip_s": statistics.median(times)}))
"""


def _run(args, **kwargs):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                        text=True, **kwargs)
  if proc.returncode:
    sys.exit(f"failed ({proc.returncode}): {' '.join(args[:2])}\n{proc.stderr[-2000:]}")
  return proc


def _size(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
  """Prints the table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", help="a trained run (default: train synthetic_dk briefly)")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  tmp = tempfile.mkdtemp(prefix="export_latency_")
  workdir = args.workdir
  if workdir is None:
    workdir = os.path.join(tmp, "run")
    _run(["-m", "vivit_knn.main", f"--config={CONFIG}", f"--workdir={workdir}",
          "--config.train.num_train_steps=20", "--config.optimizer.warmup_steps=5",
          "--config.train.eval_at_end=False"])
  out = os.path.join(tmp, "export")
  _run(["-m", "vivit_knn.tools.export", f"--workdir={workdir}", f"--out={out}"])
  with open(os.path.join(out, "export.json")) as f:
    t, h, w, _ = json.load(f)["input_shape"]
  video = os.path.join(tmp, "clip.mp4")
  frames = video_fixtures.synthetic_frames(t, h, w, label=1)
  video_fixtures.write_video(video, frames)
  clip = os.path.join(tmp, "clip.npy")
  np.save(clip, frames[None])

  serve, first, load, infer = [], [], [], []
  for _ in range(args.rounds):
    got = json.loads(_run(["-c", _SERVE, os.path.join(out, "saved_model"), clip]).stdout)
    serve.append(got["per_clip_s"])
    first.append(got["first_call_s"])
    load.append(got["load_s"])
    start = time.perf_counter()
    _run(["-m", "vivit_knn.main", f"--config={CONFIG}", f"--workdir={workdir}", "--mode=infer",
          f"--video={video}"])
    infer.append(time.perf_counter() - start)

  def row(name, xs, unit=1.0, fmt="{:.3f} s"):
    print(f"{name:<34} median {fmt.format(statistics.median(xs) * unit)}"
          f"   min {fmt.format(min(xs) * unit)}")

  print(f"one clip {t}x{h}x{w}, {args.rounds} interleaved rounds, "
        f"load average {os.getloadavg()[0]:.2f}")
  row("SavedModel, per clip (steady)", serve, 1e3, "{:.2f} ms")
  row("SavedModel, first call", first)
  row("SavedModel, process start + load", load)
  row("--mode=infer, whole command", infer)
  print(f"--mode=infer / SavedModel per clip: {statistics.median(infer) / statistics.median(serve):.0f}x;"
        f" / SavedModel load + first call: "
        f"{statistics.median(infer) / statistics.median([a + b for a, b in zip(load, first)]):.1f}x")
  for name in ("saved_model", "model.stablehlo", "model.stablehlo.json", "export.json"):
    print(f"{name:<22} {_size(os.path.join(out, name)) / 1e6:.3f} MB")


if __name__ == "__main__":
  main()
