"""Videos per second per worker of the converter on Beam's DirectRunner, at 1 and 2 workers.

  python benchmarks/convert.py [--videos=48] [--rounds=3] [--baseline=<other checkout>]

Writes a UCF101-layout folder of MPEG-4 AVI videos (textured, 340x256, about 100
frames each) once, then converts it round by round with
`python -m vivit_knn.data.convert --format=ucf101 --num_workers=W` for W = 1, 2,
each run a fresh process into a fresh folder, the variants interleaved within a
round. The time is the whole command's wall time, start-up included (Beam's
worker processes, their imports), so it is what a user waits for.

`--baseline=<folder>` converts with the `vivit_knn` of another checkout too, in
the same rounds and with the same flags (e.g. a checkout of an earlier version
to compare converters); its ratio to this checkout is printed per worker count.
Every run's records are compared byte for byte with the first run of the same
checkout: the last line must say yes.
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
  parser.add_argument("--videos", type=int, default=48, help="videos to write (3 classes)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
  parser.add_argument("--baseline", default="", help="another checkout to compare with")
  args = parser.parse_args()
  worker_counts = [int(w) for w in args.workers.split(",")]
  variants = [("this", ROOT)] + ([("baseline", os.path.abspath(args.baseline))]
                                 if args.baseline else [])
  per_class = max(2, args.videos // 3)
  with tempfile.TemporaryDirectory() as tmp:
    raw = os.path.join(tmp, "ucf")
    video_fixtures.write_ucf101(raw, train_per_class=per_class - per_class // 3,
                                test_per_class=per_class // 3, num_frames=96,
                                size=(256, 340), textured=True)
    videos = 3 * per_class
    times = {(name, w): [] for name, _ in variants for w in worker_counts}
    same, reference = True, {}
    for r in range(args.rounds):
      for w in worker_counts:
        for name, checkout in variants:
          out = os.path.join(tmp, f"out_{name}_{w}_{r}")
          # Two shards per worker and split keep every worker busy.
          times[(name, w)].append(_convert(checkout, raw, out, w, 2 * max(worker_counts)))
          reference.setdefault(name, out)
          same = same and _same_records(reference[name], out)
  print(f"{videos} videos of ~100 frames at 340x256 (MPEG-4 AVI) -> JPEG TFRecords, "
        f"{2 * max(worker_counts)} shards per split; {args.rounds} interleaved rounds; "
        f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.2f} at the end")
  print(f"{'converter':<10} {'workers':>7} {'median s':>9} {'min s':>7} "
        f"{'videos/s/worker (median)':>25} {'(best)':>8}")
  rates = {}
  for (name, w), secs in times.items():
    med, best = statistics.median(secs), min(secs)
    rates[(name, w)] = videos / med / w
    print(f"{name:<10} {w:>7} {med:>9.1f} {best:>7.1f} {videos / med / w:>25.2f} "
          f"{videos / best / w:>8.2f}")
  if args.baseline:
    for w in worker_counts:
      print(f"workers={w}: this / baseline videos per second per worker = "
            f"{rates[('this', w)] / rates[('baseline', w)]:.2f}")
  print(f"same records in every run: {'yes' if same else 'NO'}")


if __name__ == "__main__":
  main()
