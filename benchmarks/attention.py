"""Times one attention layer's core: dense vs exact k-NN (radix search) vs naive top_k k-NN.

The core is logits + softmax + weighted sum of the values for given q, k, v (no
q/k/v or output projections). All variants are jitted, warmed up, checked to
agree, and then timed in interleaved rounds so that machine noise hits them
alike; the table reports medians.

Usage (from the repository root):
  python benchmarks/attention.py [--also-grad] [--reps 15]
  python -m benchmarks.attention [--also-grad]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vivit_knn.models import attention


def naive_topk_knn_attention(query, key, value, k):
  """k-NN attention with the threshold taken from `lax.top_k` on all logits."""
  scale = query.shape[-1] ** -0.5
  logits = jnp.einsum("...qhd,...khd->...hqk", query, key,
                      preferred_element_type=jnp.float32) * scale
  thresh = lax.stop_gradient(lax.top_k(logits, k)[0][..., -1:])
  logits = jnp.where(logits >= thresh, logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("...hqk,...khd->...qhd", weights, value).astype(query.dtype)


def all_at_once_dense_attention(query, key, value):
  """Dense attention materialising all logits at once (flax's formulation), for reference."""
  scale = query.shape[-1] ** -0.5
  logits = jnp.einsum("...qhd,...khd->...hqk", query, key,
                      preferred_element_type=jnp.float32) * scale
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("...hqk,...khd->...qhd", weights, value).astype(query.dtype)


def with_grad(fn, cotangent):
  """Forward + backward: gradient of <fn(q, k, v), cotangent> w.r.t. q, k and v."""
  def loss(q, k, v):
    return jnp.vdot(fn(q, k, v), cotangent)
  return jax.grad(loss, argnums=(0, 1, 2))


def time_interleaved(fns, args, reps):
  """Returns {name: [seconds per call]} from `reps` rounds calling every fn once per round."""
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return times


def main(argv=None):
  """Parses flags, checks the variants agree, times them and prints the table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--tokens", type=int, default=785)
  parser.add_argument("--depth", type=int, default=64)
  parser.add_argument("--knn-k", type=int, default=None,
                      help="keys kept per query (default: round(2 * tokens / 3))")
  parser.add_argument("--reps", type=int, default=15)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--also-grad", action="store_true",
                      help="also time forward + backward (gradients w.r.t. q, k, v)")
  parser.add_argument("--skip-topk", action="store_true",
                      help="leave out the (slow) naive top_k variant")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  n = args.tokens
  k = args.knn_k or int(math.floor(2 * n / 3 + 0.5))
  attention.resolve_knn_k(k, n)
  shape = (args.batch, n, args.heads, args.depth)
  rng = np.random.default_rng(args.seed)
  q, key, v, cot = (jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for _ in range(4))

  forward = {
      "dense": lambda q, k_, v: attention.dot_product_attention(q, k_, v),
      "knn radix": lambda q, k_, v: attention.dot_product_attention(
          q, k_, v, attention.AttentionSpec("knn", k)),
      "knn lax.top_k": lambda q, k_, v: naive_topk_knn_attention(q, k_, v, k),
      "dense, all logits at once": all_at_once_dense_attention,
  }
  if args.skip_topk:
    del forward["knn lax.top_k"]
  suites = [("forward", {name: jax.jit(fn) for name, fn in forward.items()})]
  if args.also_grad:
    suites.append(("forward+backward",
                   {name: jax.jit(with_grad(fn, cot)) for name, fn in forward.items()}))

  cpu = platform.processor() or platform.machine()
  print(f"jax {jax.__version__} on {jax.default_backend()} ({cpu}, {os.cpu_count()} logical CPUs, "
        f"load average {os.getloadavg()[0]:.1f}); float32, jitted")
  print(f"attention core only (logits, softmax, weighted sum; no projections): "
        f"B={args.batch} H={args.heads} N={n} d={args.depth}, k={k}")

  # Correctness before timing: the radix threshold equals the top_k one exactly, and
  # the k-NN outputs agree.
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, key) * args.depth ** -0.5
  radix_thresh = jax.jit(attention.kth_largest, static_argnums=1)(logits, k)
  topk_thresh = jax.jit(lambda x: lax.top_k(x, k)[0][..., -1:])(logits)
  assert np.array_equal(np.asarray(radix_thresh), np.asarray(topk_thresh)), "thresholds differ"
  fwd = suites[0][1]
  outs = {name: np.asarray(fn(q, key, v)) for name, fn in fwd.items()}
  reference = "knn lax.top_k" if "knn lax.top_k" in outs else None
  if reference:
    np.testing.assert_allclose(outs["knn radix"], outs[reference], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outs["dense"], outs["dense, all logits at once"],
                             rtol=1e-5, atol=1e-5)
  print("check: radix threshold == top_k threshold (exact); knn radix output allclose to "
        f"{'the top_k one' if reference else '(top_k skipped)'}; dense variants allclose")

  for title, fns in suites:
    for fn in fns.values():
      for _ in range(args.warmup):
        jax.block_until_ready(fn(q, key, v))
    times = time_interleaved(fns, (q, key, v), args.reps)
    med = {name: 1e3 * float(np.median(ts)) for name, ts in times.items()}
    lo = {name: 1e3 * float(np.min(ts)) for name, ts in times.items()}
    print(f"\n{title}: median of {args.reps} interleaved rounds")
    print(f"  {'variant':<27} {'median ms':>10} {'min ms':>9} {'x dense':>8}")
    for name in fns:
      print(f"  {name:<27} {med[name]:>10.1f} {lo[name]:>9.1f} {med[name] / med['dense']:>8.2f}")
    summary = f"  knn/dense = {med['knn radix'] / med['dense']:.2f}"
    if "knn lax.top_k" in med:
      summary += f", topk/dense = {med['knn lax.top_k'] / med['dense']:.2f}"
    print(summary)


if __name__ == "__main__":
  main()
