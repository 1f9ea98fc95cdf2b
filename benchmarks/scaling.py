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


def main() -> None:
  """Runs the benchmark and prints the table."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=192)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args()

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
