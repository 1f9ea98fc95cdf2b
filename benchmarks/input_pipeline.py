"""Input pipeline throughput vs the model's CPU train-step rate.

  python benchmarks/input_pipeline.py [--videos=24] [--repeats=3]

Writes real video files (PyAV, 340x256 MPEG-4 AVI) in a UCF101 layout in a
temporary folder, converts them to DMVR TFRecords with the converter, then
times 8x224x224 train clips:

* clips/s with tf.data limited to one thread (one core), and
* clips per CPU-second of the whole process with tf.data free to use all
  cores (``clips/s/core``; CPU time also counts Python and TF overheads),

for the TFRecord source and the raw-video (PyAV) source under a few
augmentation settings, and prints them next to the train-step rate of a small
Dk-ViViT on this CPU. Numbers are medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top

from tests import video_fixtures as testing  # pylint: disable=g-import-not-at-top
from vivit_knn.data import convert, registry  # pylint: disable=g-import-not-at-top

CLIP = dict(num_frames=8, frame_stride=2, image_size=224)
SETTINGS = {
    "crop+flip": {},
    "+scale jitter": {"scale_jitter": (0.9, 1.33)},
    "+colour+randaug": {"scale_jitter": (0.9, 1.33), "color_jitter": 0.4,
                        "randaugment_num_layers": 2},
}
BATCH = 8


def _options(threads: int | None) -> tf.data.Options:
  opts = tf.data.Options()
  if threads:
    opts.threading.private_threadpool_size = threads
    opts.threading.max_intra_op_parallelism = 1
  return opts


def _time_pipeline(dataset, threads: int | None, num_batches: int):
  """``(clips per wall second, clips per CPU second)`` of the train stream."""
  ds = dataset.train_dataset(BATCH, seed=1).with_options(_options(threads))
  it = iter(ds)
  next(it)  # Warm-up: graph tracing, file opening.
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(it)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  clips = num_batches * BATCH
  return clips / wall, clips / cpu


def _dataset(name_format: str, data_dir: str, extra: dict):
  cfg = registry.DATASET_DEFAULTS["ucf101"]()
  cfg.format = name_format
  cfg.data_dir = data_dir
  cfg.scale_jitter = (1.0, 1.0)
  cfg.update(CLIP)
  cfg.update(extra)
  return registry.build_dataset(cfg)


def _model_rate(repeats: int):
  """Train-step clips/s of a small Dk-ViViT at 8x224x224, or an error note."""
  try:
    import jax  # pylint: disable=g-import-not-at-top
    from tests.tiny import load_config  # pylint: disable=g-import-not-at-top
    from vivit_knn.train import experiment, steps  # pylint: disable=g-import-not-at-top
    config = load_config("synthetic_dk")
    config.dataset.image_size = 224
    config.dataset.num_train = 64
    config.dataset.num_eval = 8
    m = config.model
    m.hidden_size, m.num_heads, m.mlp_dim = 192, 3, 768
    m.patch_size = (16, 16, 2)
    m.spatial_transformer.num_layers, m.temporal_transformer.num_layers = 4, 2
    config.train.global_batch_size = BATCH
    config.mesh.data = 1
    exp = experiment.build_experiment(config, devices=jax.devices()[:1])
    state = exp.init_state(jax.random.key(0))
    step = steps.make_train_step(exp)
    batch = {"inputs": np.zeros((BATCH, 8, 224, 224, 3), np.float32),
             "label": np.zeros((BATCH,), np.int32)}
    rng = jax.random.key(1)
    state, out = step(state, batch, rng)
    jax.block_until_ready(out)
    rates = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(3):
        state, out = step(state, batch, rng)
      jax.block_until_ready(out)
      rates.append(3 * BATCH / (time.perf_counter() - start))
    desc = ("Dk-ViViT d=192 Ls=4 Lt=2 16x16x2, k-NN 2/3, batch 8, "
            f"{jax.device_count()} CPU device(s)")
    return statistics.median(rates), desc
  except Exception as err:  # Report, do not hide, a missing model part.
    return None, f"unavailable ({type(err).__name__}: {err})"


def main() -> None:
  """Builds the data, times every configuration and prints the table."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--videos", type=int, default=24,
                      help="videos to write (3 classes, 2/3 train)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batches", type=int, default=12,
                      help="timed batches of 8 clips per repeat")
  args = parser.parse_args()
  logging.set_verbosity(logging.ERROR)
  cores = os.cpu_count()
  per_class = max(1, args.videos // 3)
  with tempfile.TemporaryDirectory() as tmp:
    raw = os.path.join(tmp, "ucf")
    start = time.perf_counter()
    testing.write_ucf101(raw, train_per_class=per_class - per_class // 3,
                         test_per_class=per_class // 3, num_frames=96,
                         size=(256, 340), textured=True)
    records = os.path.join(tmp, "tfrecords")
    convert.convert("ucf101", raw, records, num_shards=4, num_workers=1,
                    progress=False)
    print(f"data: {args.videos} videos of ~100 frames at 340x256 (MPEG-4 AVI)"
          f" -> JPEG TFRecords, written in {time.perf_counter() - start:.0f}"
          f" s; {cores} CPU cores visible")
    print(f"clips: 8x224x224, stride 2, batch {BATCH}; medians of "
          f"{args.repeats} x {args.batches} batches\n")
    print(f"{'source':<10} {'augmentation':<17} {'1 thread clips/s':>17} "
          f"{'clips/CPU-s (all cores)':>24}")
    results = {}
    for source, data_dir in (("tfrecord", records), ("folder", raw)):
      for setting, extra in SETTINGS.items():
        if source == "folder" and setting != "crop+flip":
          continue
        dataset = _dataset(source, data_dir, extra)
        single = [_time_pipeline(dataset, 1, args.batches)[0]
                  for _ in range(args.repeats)]
        per_cpu = [_time_pipeline(dataset, None, args.batches)[1]
                   for _ in range(args.repeats)]
        results[(source, setting)] = statistics.median(per_cpu)
        print(f"{source:<10} {setting:<17} {statistics.median(single):>17.1f}"
              f" {statistics.median(per_cpu):>24.1f}")
  rate, desc = _model_rate(args.repeats)
  print()
  if rate is None:
    print(f"model train step: {desc}")
    return
  print(f"model train step on CPU: {rate:.1f} clips/s ({desc})")
  for (source, setting), per_core in results.items():
    print(f"  {source} {setting}: one input core feeds "
          f"{per_core / rate:.1f}x the CPU model's consumption")


if __name__ == "__main__":
  main()
