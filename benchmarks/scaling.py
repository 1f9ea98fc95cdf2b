"""How training cost grows with the number of frames: X-ViT vs TimeSformer divided vs joint.

    python benchmarks/scaling.py [--width=192 --layers=4 --image_size=224 --rounds=7]

Times one forward+backward pass on one clip at T=8 and T=16 frames for each model
(a realistic 14x14 tokens per frame at 224^2 with 16x16 patches, and a small width
so it runs in minutes on a laptop CPU). Measurements are interleaved over rounds
(every model and T once per round) and the median per cell is reported, so load
changes during the run hit every cell alike. X-ViT attends within frames
(linear in T: the T16/T8 ratio should be about 2); joint space-time attention
over all T*N tokens grows quadratically (ratio well above 2); divided sits in
between (its temporal attention is quadratic in T but over few tokens).

    python benchmarks/scaling.py --all_reduce_devices=8 [--rounds=30]

instead times a gradient-sized all-reduce (0.64 MB, the size of
`configs/synthetic_dk.py`'s parameters) over N forced CPU devices with the same
bytes split into 1, 4, 16 and 76 arrays (76 = that model's parameter count). XLA
emits one combined all-reduce for each, yet on the CPU runtime the cost grows with
the number of arrays, not with the bytes: this is what makes the forced 8-device
CPU mesh slow per device for small models (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vivit_knn.config import model_config  # noqa: E402  (after the path setup)
from vivit_knn.models.registry import build_model  # noqa: E402

MODELS = (
    ("X-ViT (space-time mixing)", "xvit", "space_time_mixing"),
    ("TimeSformer divided", "timesformer", "divided_space_time"),
    ("TimeSformer joint", "timesformer", "joint_space_time"),
)
FRAMES = (8, 16)


def _step_fn(name: str, attention_type: str, args, frames: int):
  """A jitted forward+backward on one clip, and its inputs."""
  cfg = model_config()
  cfg.name, cfg.attention_type = name, attention_type
  cfg.hidden_size, cfg.num_heads, cfg.mlp_dim = args.width, args.width // 64, 4 * args.width
  cfg.num_layers, cfg.patch_size, cfg.xvit_div = args.layers, (16, 16, 1), 8
  model = build_model(cfg, num_classes=10)
  clip = jax.random.normal(jax.random.key(0), (1, frames, args.image_size, args.image_size, 3))
  params = jax.jit(model.init)(jax.random.key(1), clip)["params"]

  def loss(p, x):
    logits, _ = model.apply({"params": p}, x, train=False)
    return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

  grad = jax.jit(jax.grad(loss))
  jax.block_until_ready(grad(params, clip))  # compile + warm up
  return lambda: jax.block_until_ready(grad(params, clip))


ALL_REDUCE_FLOATS = 160_000  # 0.64 MB of float32
ALL_REDUCE_ARRAYS = (1, 4, 16, 76)


def all_reduce_table(devices: int, rounds: int) -> None:
  """Prints the wall and CPU time of one combined all-reduce of the same bytes in k arrays."""
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from benchmarks import collectives

  mesh = Mesh(np.array(jax.devices()[:devices]), ("d",))
  print(f"one psum of {4 * ALL_REDUCE_FLOATS / 1e6:.2f} MB over {devices} {jax.default_backend()}"
        f" devices, split into k arrays; median / min of {rounds} rounds, "
        f"load average {os.getloadavg()[0]:.2f}")
  print(f"{'arrays':>7}{'all-reduce ops':>16}{'wall ms':>18}{'CPU ms (median)':>17}")
  for k in ALL_REDUCE_ARRAYS:
    xs = [jax.device_put(jnp.zeros((devices, ALL_REDUCE_FLOATS // k)),
                         NamedSharding(mesh, P("d"))) for _ in range(k)]
    fn = jax.jit(jax.shard_map(lambda g: jax.lax.psum(g, "d"), mesh=mesh, in_specs=P("d"),
                               out_specs=P("d")))
    ops = len(collectives.count_collectives(fn.lower(xs).compile().as_text()))
    for _ in range(3):
      jax.block_until_ready(fn(xs))
    wall, cpu = [], []
    for _ in range(rounds):
      c0, t0 = time.process_time(), time.perf_counter()
      jax.block_until_ready(fn(xs))
      wall.append(time.perf_counter() - t0)
      cpu.append(time.process_time() - c0)
    print(f"{k:>7}{ops:>16}{1e3 * statistics.median(wall):>10.2f} /{1e3 * min(wall):>6.2f}"
          f"{1e3 * statistics.median(cpu):>17.2f}")


def main() -> None:
  """Runs the benchmark and prints the table."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=192)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--all_reduce_devices", type=int, default=0,
                      help="if >= 2: time the all-reduce table on this many forced CPU devices")
  args = parser.parse_args()
  if args.rounds < 1:
    parser.error(f"--rounds must be >= 1, got {args.rounds}")
  if args.all_reduce_devices:
    if args.all_reduce_devices < 2:
      parser.error(f"--all_reduce_devices must be >= 2, got {args.all_reduce_devices}")
    if jax.device_count() < args.all_reduce_devices:
      parser.error(f"--all_reduce_devices={args.all_reduce_devices} needs that many devices: "
                   f"run with XLA_FLAGS=--xla_force_host_platform_device_count="
                   f"{args.all_reduce_devices} JAX_PLATFORMS=cpu")
    all_reduce_table(args.all_reduce_devices, args.rounds)
    return

  cells = {}
  for label, name, kind in MODELS:
    for t in FRAMES:
      cells[(label, t)] = _step_fn(name, kind, args, t)
  times = {key: [] for key in cells}
  for _ in range(args.rounds):
    for key, step in cells.items():
      start = time.perf_counter()
      step()
      times[key].append(time.perf_counter() - start)

  tokens = (args.image_size // 16) ** 2
  print(f"forward+backward, 1 clip, {tokens} tokens/frame, width {args.width}, "
        f"{args.layers} layers, {jax.device_count()} {jax.default_backend()} device(s), "
        f"median of {args.rounds} interleaved rounds")
  print(f"{'model':<28}{'T=8 (s)':>10}{'T=16 (s)':>10}{'T16/T8':>9}")
  for label, _, _ in MODELS:
    t8, t16 = (statistics.median(times[(label, t)]) for t in FRAMES)
    print(f"{label:<28}{t8:>10.3f}{t16:>10.3f}{t16 / t8:>9.2f}")


if __name__ == "__main__":
  main()
