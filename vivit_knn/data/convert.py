"""Converts a video folder into DMVR TFRecord shards.

  python -m vivit_knn.data.convert --format=ucf101 --root=<UCF101 dir> \
      --split=1 --out=<dir>
  python -m vivit_knn.data.convert --format=hmdb51 --root=<HMDB51 dir> \
      --split=1 --out=<dir>
  python -m vivit_knn.data.convert --format=folder --root=<dir> --out=<dir>

Writes ``train.tfrecord-*`` and ``test.tfrecord-*`` (one ``SequenceExample``
per video, all frames as JPEG, downscaled to ``--short_side``), plus
``classes.txt`` and ``metadata.json``. Train videos are shuffled once (fixed
seed) before sharding so every shard mixes classes; test videos keep the
split list's order.

``--format=folder`` reads ``<root>/<class>/<video>``. If ``<root>`` has
``train/`` and ``test/`` (or ``val/``) folders of classes, those are the
splits; otherwise ``--eval_fraction`` of each class's videos (picked by a
hash of the file path, so stable) form the test split.

The conversion is resumable: re-running the same command skips finished
shards. Videos that cannot be decoded are skipped, counted and listed at the
end and in ``metadata.json``. Point training at the output with
``--config.dataset.data_dir=<out>`` (datasets ``ucf101``/``hmdb51`` with
``format='tfrecord'``, or ``tfrecord``).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random

import tqdm
from absl import app, flags

# Worker processes re-import this module (the spawn start method imports
# __main__), so it imports only light modules at the top; TensorFlow-backed
# writers are imported inside convert().
from vivit_knn import cli
from vivit_knn.data import splits, transcode

FORMATS = ("ucf101", "hmdb51", "folder")
DEFAULT_SHORT_SIDE = 256
# Shards of ~256 videos keep UCF101/HMDB51 shards at a few hundred MB.
VIDEOS_PER_SHARD = 256

_FORMAT = flags.DEFINE_enum("format", None, FORMATS, "Input layout.")
_ROOT = flags.DEFINE_string("root", None, "Input video folder.")
_OUT = flags.DEFINE_string("out", None, "Output folder for the shards.")
_SPLIT = flags.DEFINE_integer("split", 1, "Official split (ucf101, hmdb51).")
_SPLITS_DIR = flags.DEFINE_string(
    "splits_dir", "", "Split-file folder; default: the standard one in "
    "--root.")
_EVAL_FRACTION = flags.DEFINE_float(
    "eval_fraction", 0.1, "format=folder without train/test folders: share "
    "of each class held out for the test split.")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", 0, f"Shards per split; 0 = one per {VIDEOS_PER_SHARD} "
    "videos.")
_SHORT_SIDE = flags.DEFINE_integer(
    "short_side", DEFAULT_SHORT_SIDE, "Downscale frames to this short side "
    "(never enlarges); 0 keeps the original size.")
_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality.")
_WORKERS = flags.DEFINE_integer(
    "num_workers", 0, "Decoding processes; 0 = one per CPU, 1 = in-process.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the train order shuffle.")


def list_videos(fmt: str, root: str, split: int, splits_dir: str,
                eval_fraction: float) -> splits.VideoSplits:
  """The train/test videos of the input layout."""
  if fmt == "ucf101":
    return splits.ucf101(root, split, splits_dir)
  if fmt == "hmdb51":
    return splits.hmdb51(root, split, splits_dir)
  return splits.class_folders(root, eval_fraction)


def _records(items, class_names, root, short_side, quality, pool):
  """Yields a shard's results: ``('ok', record)`` or ``('skip', ...)``."""
  from vivit_knn.data import dmvr  # pylint: disable=g-import-not-at-top
  jobs = [(path, short_side, quality) for path, _ in items]
  outputs = (pool.imap(transcode.transcode_job, jobs) if pool else
             map(transcode.transcode_job, jobs))
  for (path, label), output in zip(items, outputs):
    if output[0] == "skip":
      yield output
      continue
    yield ("ok", dmvr.make_sequence_example(
        output[1], label, class_names[label], os.path.relpath(path, root)))


def convert(fmt: str, root: str, out: str, *, split: int = 1,
            splits_dir: str = "", eval_fraction: float = 0.1,
            num_shards: int = 0, short_side: int = DEFAULT_SHORT_SIDE,
            jpeg_quality: int = 90, num_workers: int = 1, seed: int = 0,
            progress: bool = True) -> dict:
  """Converts ``root`` into shards in ``out``; returns the metadata written.

  Raises:
    FileNotFoundError / ValueError: for a missing root or split file, or an
      unknown class in a split file (naming the file).
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--root={root} is not a directory")
  videos = list_videos(fmt, root, split, splits_dir, eval_fraction)
  from vivit_knn.data import metadata, shards  # pylint: disable=g-import-not-at-top
  train = list(zip(videos.train.paths, videos.train.labels))
  random.Random(seed).shuffle(train)
  test = list(zip(videos.test.paths, videos.test.labels))
  workers = num_workers or os.cpu_count() or 1
  pool = (multiprocessing.get_context("spawn").Pool(workers)
          if workers > 1 else None)
  meta = {"format": metadata.FORMAT, "version": metadata.VERSION,
          "source": fmt, "split": split if fmt != "folder" else None,
          "short_side": short_side, "jpeg_quality": jpeg_quality,
          "class_names": videos.class_names, "splits": {}}
  try:
    with tqdm.tqdm(total=len(train) + len(test), unit="video",
                   disable=not progress) as bar:
      for name, items in (("train", train), ("test", test)):
        count = num_shards or math.ceil(len(items) / VIDEOS_PER_SHARD)
        meta["splits"][name] = shards.write_split(
            out, name, len(items), count,
            lambda ids, items=items: _records(
                [items[i] for i in ids], videos.class_names, root,
                short_side, jpeg_quality, pool),
            bar.update)
  finally:
    if pool:
      pool.close()
      pool.join()
  for name, listed in (("train", videos.train), ("test", videos.test)):
    if listed.missing:
      meta["splits"][name]["skipped"].setdefault("missing", []).extend(
          listed.missing)
  metadata.write_class_names(out, videos.class_names)
  metadata.write_json(os.path.join(out, metadata.METADATA_FILE), meta)
  return meta


def summary(meta: dict) -> str:
  """One-paragraph report of a conversion."""
  lines = [f"classes: {len(meta['class_names'])}"]
  for name, split in meta["splits"].items():
    skipped = {r: len(v) for r, v in split["skipped"].items()}
    lines.append(f"{name}: {split['num_examples']} videos in "
                 f"{len(split['shards'])} shards; skipped "
                 f"{sum(skipped.values())} {skipped or ''}".rstrip())
    for reason, details in sorted(split["skipped"].items()):
      lines.extend(f"  skipped ({reason}): {d}" for d in details)
  return "\n".join(lines)


def main(argv) -> int:
  """Runs the conversion described by the flags."""
  del argv
  for flag in (_FORMAT, _ROOT, _OUT):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required")
  meta = convert(_FORMAT.value, _ROOT.value, _OUT.value, split=_SPLIT.value,
                 splits_dir=_SPLITS_DIR.value, eval_fraction=_EVAL_FRACTION.value,
                 num_shards=_NUM_SHARDS.value, short_side=_SHORT_SIDE.value,
                 jpeg_quality=_QUALITY.value, num_workers=_WORKERS.value, seed=_SEED.value)
  print(summary(meta))
  print(f"wrote {_OUT.value}; train with --config.dataset.data_dir="
        f"{_OUT.value}")
  return 0


if __name__ == "__main__":
  cli.run(main)
