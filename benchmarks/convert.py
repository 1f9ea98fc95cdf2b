"""Videos per second per worker of the converter on Beam's DirectRunner, at 1 and 2 workers.

  python benchmarks/convert.py [--videos=48] [--rounds=3] [--baseline=<other checkout>]

Writes two UCF101-layout folders of MPEG-4 AVI videos (textured, 340x256, about 100
frames each; the second twice as large) once, then converts them round by round with
`python -m vivit_knn.data.convert --format=ucf101 --num_workers=W` for W = 1, 2,
each run a fresh process into a fresh folder, the variants interleaved within a
round. The time is the whole command's wall time, start-up included (Beam's
worker processes, their imports), so it is what a user waits for; the marginal
rate (the extra videos of the larger folder over the extra seconds) leaves the
start-up out, which is what a dataset of 10^5 videos sees.

`--baseline=<folder>` converts with the `vivit_knn` of another checkout too, in
the same rounds and with the same flags (e.g. a checkout of an earlier version
to compare converters); its ratio to this checkout is printed per worker count.
Every run's records are compared byte for byte with the first run of the same
checkout and folder.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import video_fixtures  # pylint: disable=g-import-not-at-top


def _convert(checkout: str, raw: str, out: str, workers: int, shards: int) -> float:
  """Seconds one conversion command takes, start to exit."""
  env = dict(os.environ, PYTHONPATH=checkout)
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "vivit_knn.data.convert", "--format=ucf101",
                  f"--root={raw}", f"--out={out}", f"--num_workers={workers}",
                  f"--num_shards={shards}"], cwd=checkout, env=env, check=True,
                 capture_output=True)
  return time.perf_counter() - start


def _same_records(a: str, b: str) -> bool:
  names = sorted(n for n in os.listdir(a) if ".tfrecord-" in n)
  return names == sorted(n for n in os.listdir(b) if ".tfrecord-" in n) and all(
      filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False) for n in names)


def main() -> None:
  """Prints the table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--videos", type=int, default=48,
                      help="videos of the smaller folder (3 classes); the larger has twice as many")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
  parser.add_argument("--baseline", default="", help="another checkout to compare with")
  args = parser.parse_args()
  worker_counts = [int(w) for w in args.workers.split(",")]
  variants = [("this", ROOT)] + ([("baseline", os.path.abspath(args.baseline))]
                                 if args.baseline else [])
  shards = 2 * max(worker_counts)  # two shards per worker and split keep every worker busy
  with tempfile.TemporaryDirectory() as tmp:
    folders = {}
    for scale in (1, 2):
      per_class = scale * max(2, args.videos // 3)
      folders[scale] = (os.path.join(tmp, f"ucf_{scale}"), 3 * per_class)
      video_fixtures.write_ucf101(folders[scale][0], train_per_class=per_class - per_class // 3,
                                  test_per_class=per_class // 3, num_frames=96,
                                  size=(256, 340), textured=True)
    times = {(name, w, scale): [] for name, _ in variants for w in worker_counts
             for scale in folders}
    same, reference = {name: True for name, _ in variants}, {}
    for r in range(args.rounds):
      for scale, (raw, _) in folders.items():
        for w in worker_counts:
          for name, checkout in variants:
            out = os.path.join(tmp, f"out_{name}_{w}_{scale}_{r}")
            times[(name, w, scale)].append(_convert(checkout, raw, out, w, shards))
            reference.setdefault((name, scale), out)
            same[name] = same[name] and _same_records(reference[(name, scale)], out)
  small, large = folders[1][1], folders[2][1]
  print(f"{small} and {large} videos of ~100 frames at 340x256 (MPEG-4 AVI) -> JPEG "
        f"TFRecords, {shards} shards per split; {args.rounds} interleaved rounds; "
        f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.2f} at the end")
  print("whole command (start-up included), and the marginal rate of the extra "
        f"{large - small} videos (start-up excluded), per worker; medians (best)")
  print(f"{'converter':<10} {'workers':>7} {f'{small} videos s':>15} {f'{large} videos s':>15} "
        f"{'videos/s/worker':>16} {'marginal videos/s/worker':>25}")
  rates = {}
  for name, _ in variants:
    for w in worker_counts:
      t1, t2 = times[(name, w, 1)], times[(name, w, 2)]
      whole = large / statistics.median(t2) / w
      marginal = (large - small) / (statistics.median(t2) - statistics.median(t1)) / w
      rates[(name, w)] = (whole, marginal)
      print(f"{name:<10} {w:>7} {statistics.median(t1):>8.1f} ({min(t1):.1f}) "
            f"{statistics.median(t2):>8.1f} ({min(t2):.1f}) {whole:>16.2f} {marginal:>25.2f}")
  if args.baseline:
    for w in worker_counts:
      (a, b), (c, d) = rates[("this", w)], rates[("baseline", w)]
      print(f"workers={w}: this / baseline per worker: {a / c:.2f} whole command, "
            f"{b / d:.2f} marginal")
  for name, ok in same.items():
    print(f"{name}: the same records in every run of a folder: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
  main()
