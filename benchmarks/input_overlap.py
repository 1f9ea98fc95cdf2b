"""Does the input transfer overlap the train step? Prefetch to the devices on and off.

  python benchmarks/input_overlap.py [--rounds=5] [--steps=12]

Builds the README's main job (`configs/synthetic_dk.py`) and measures, on this machine:

* `step alone`: the train step on one batch already on the devices;
* `input alone`: one global batch from the run's pipeline, slowed on purpose (a sleep, which
  takes no CPU from the step) so that it takes as long as one step, and sent to the devices;
* the loop, as the trainer runs it (`DevicePrefetcher`), with `train.prefetch_batches=2`
  (`on`) and `0` (`off`), in interleaved rounds.

It prints `overlap prefetch=on: <ratio>` and `overlap prefetch=off: <ratio>`, the medians and
minima over the rounds of: loop time per step / max(step alone, input alone). 1.0 is perfect
overlap, 2.0 none. Then it trains the tiny config on 2 local processes and prints the
host-side collectives per ordinary step (neither logging nor saving) counted by
`tests/host_syncs.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _per_step(run, steps):
  start = time.perf_counter()
  run(steps)
  return (time.perf_counter() - start) / steps


def overlap(rounds: int, steps: int) -> None:
  """Prints the overlap ratios with and without prefetch (see the module doc)."""
  import jax
  import numpy as np

  from tests.tiny import load_config
  from vivit_knn.train.experiment import build_experiment
  from vivit_knn.train.prefetch import DevicePrefetcher
  from vivit_knn.train.sharding import shard_batch
  from vivit_knn.train.steps import make_train_step

  config = load_config("synthetic_dk")
  exp = build_experiment(config)
  batch_size = config.train.global_batch_size
  state = exp.init_state(jax.random.key(0))
  step = make_train_step(exp)
  rng = jax.random.key(1)
  source = exp.dataset.train_batches(batch_size, seed=0)
  fixed = shard_batch(next(source), exp.mesh)
  holder = {"state": step(state, fixed, rng)[0]}  # compiled

  def steps_on_fixed(n):
    for _ in range(n):
      holder["state"], metrics = step(holder["state"], fixed, rng)
    jax.block_until_ready(metrics)

  step_s = statistics.median(_per_step(steps_on_fixed, steps) for _ in range(3))
  read_s = statistics.median(_per_step(lambda n: [shard_batch(next(source), exp.mesh)
                                                  for _ in range(n)], steps) for _ in range(3))
  delay = max(0.0, step_s - read_s)

  def slowed():
    for batch in source:
      time.sleep(delay)
      yield batch

  def input_only(n):
    batches = slowed()
    for _ in range(n):
      jax.block_until_ready(shard_batch(next(batches), exp.mesh))

  ratios = {"on": [], "off": [], "input": []}
  for _ in range(rounds):
    input_s = _per_step(input_only, steps)
    ratios["input"].append(input_s)
    for name, size in (("on", 2), ("off", 0)):
      prefetcher = DevicePrefetcher(slowed(), exp.mesh, size)

      def loop(n, prefetcher=prefetcher):
        for _ in range(n):
          holder["state"], metrics = step(holder["state"], next(prefetcher), rng)
        jax.block_until_ready(metrics)

      loop(2)  # the buffer fills, as it does while a run starts
      ratios[name].append(_per_step(loop, steps) / max(step_s, input_s))
      prefetcher.close()
  print(f"step alone {1e3 * step_s:.0f} ms; input alone {1e3 * np.median(ratios['input']):.0f} "
        f"ms (read {1e3 * read_s:.0f} ms + sleep {1e3 * delay:.0f} ms); {rounds} rounds of "
        f"{steps} steps; {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"load average {os.getloadavg()[0]:.2f}")
  for name in ("on", "off"):
    print(f"overlap prefetch={name}: {statistics.median(ratios[name]):.3f} "
          f"(min {min(ratios[name]):.3f})")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def host_syncs() -> None:
  """Prints the host-side collectives per ordinary step of a 2-process run."""
  with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    counts = os.path.join(tmp, "counts.json")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.host_syncs", counts, "--config=configs/synthetic_tiny.py",
         "--config.train.eval_at_end=False", "--config.train.global_batch_size=8",
         "--config.train.num_train_steps=20", "--config.train.log_every_steps=10",
         "--config.train.checkpoint_every_steps=10", f"--workdir={tmp}/run",
         f"--coordinator_address=127.0.0.1:{_free_port()}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    for proc in procs:
      _, err = proc.communicate(timeout=900)
      if proc.returncode:
        sys.exit(f"the 2-process run failed ({proc.returncode}):\n{err[-2000:]}")
    for process in (0, 1):
      with open(f"{counts}.{process}") as f:
        by_step = {int(k): v for k, v in json.load(f)["by_step"].items()}
      ordinary = [s for s in range(1, 21) if s % 10]
      logged = (10, 20)
      print(f"host syncs per ordinary step: {sum(by_step.get(s, 0) for s in ordinary) / len(ordinary):g}"
            f" (process {process}; per log/save step: "
            f"{sum(by_step.get(s, 0) for s in logged) / len(logged):g})")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=12)
  args = parser.parse_args()
  overlap(args.rounds, args.steps)
  host_syncs()


if __name__ == "__main__":
  main()
