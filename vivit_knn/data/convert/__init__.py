"""Converting a video folder into DMVR TFRecord shards.

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
shards. ``<out>/conversion.json``, written before the first shard, records
every option and a hash of the source videos (see :mod:`.manifest`): a rerun
with other options or sources stops with one line naming each difference,
unless ``overwrite`` (``--overwrite``) removes the earlier conversion first;
it removes only the converter's own outputs, never other files in ``<out>``.
Shards are written under a temporary name and renamed when complete, so a
half-written shard is never read or resumed. Videos that cannot be decoded are skipped, counted and listed at the
end and in ``metadata.json``. Point training at the output with
``--config.dataset.data_dir=<out>`` (datasets ``ucf101``/``hmdb51`` with
``format='tfrecord'``, or ``tfrecord``).

This package's top level (listing, per-video transcoding, the conversion
loop) imports no TensorFlow, so the worker processes that decode videos start
quickly; the TensorFlow-backed shard writer (:mod:`.shards`) and record format
are imported by :func:`convert` itself. The command line lives in
``__main__.py``.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import random

import numpy as np
from PIL import Image

from vivit_knn.data import skips, splits, video_io

FORMATS = ("ucf101", "hmdb51", "folder")
DEFAULT_SHORT_SIDE = 256
DEFAULT_QUALITY = 90
# Shards of ~256 videos keep UCF101/HMDB51 shards at a few hundred MB.
VIDEOS_PER_SHARD = 256


# Per-video work, run in the worker processes. Results are plain tuples
# because exceptions with extra fields do not survive pickling between
# processes.


def encode_jpeg(frame: np.ndarray, quality: int = DEFAULT_QUALITY) -> bytes:
  """JPEG bytes of one uint8 ``[H, W, 3]`` RGB frame."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(frame, np.uint8)).save(buffer, format="JPEG",
                                                    quality=quality)
  return buffer.getvalue()


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
  """Downscales ``frame`` so its short side is ``short_side``; never enlarges.

  Uses Pillow's antialiased bilinear filter; ``short_side <= 0`` keeps the
  frame as is.
  """
  height, width = frame.shape[:2]
  short = min(height, width)
  if short_side <= 0 or short <= short_side:
    return frame
  scale = short_side / short
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  if min(size) != short_side:  # Pin the short side against rounding.
    size = ((short_side, size[1]) if width <= height else
            (size[0], short_side))
  return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


def video_to_jpegs(path: str, short_side: int,
                   quality: int) -> tuple[str, object, str]:
  """``('ok', [jpeg bytes per frame], '')`` or ``('skip', reason, detail)``.

  Frames are downscaled to ``short_side`` (never enlarged; 0 keeps them).
  """
  try:
    frames = video_io.read_video(path)
    return ("ok", [encode_jpeg(resize_short_side(f, short_side), quality)
                   for f in frames], "")
  except skips.BadVideoError as err:
    return ("skip", err.reason, str(err))
  except Exception as err:  # Never let one odd file stop a conversion.
    return ("skip", skips.CORRUPT, f"{path}: {type(err).__name__}: {err}")


def transcode_job(job: tuple[str, int, int]) -> tuple[str, object, str]:
  """:func:`video_to_jpegs` on a ``(path, short_side, quality)`` tuple."""
  return video_to_jpegs(*job)


# The conversion.


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
  from vivit_knn.data import tfrecord  # pylint: disable=g-import-not-at-top
  jobs = [(path, short_side, quality) for path, _ in items]
  outputs = (pool.imap(transcode_job, jobs) if pool else
             map(transcode_job, jobs))
  for (path, label), output in zip(items, outputs):
    if output[0] == "skip":
      yield output
      continue
    yield ("ok", tfrecord.make_sequence_example(
        output[1], label, class_names[label], os.path.relpath(path, root)))


def check_out_folder(out: str) -> None:
  """Raises ValueError when ``out`` is a file or lies under one (local paths only)."""
  if "://" in out:
    return  # remote storage reports this itself
  path = os.path.abspath(out)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ValueError(f"--out={out} is a file, not a folder")
  parent = os.path.dirname(path)
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f"--out={out} lies under {parent}, which is a file, not a folder")


def convert(fmt: str, root: str, out: str, *, split: int = 1,
            splits_dir: str = "", eval_fraction: float = 0.1,
            num_shards: int = 0, short_side: int = DEFAULT_SHORT_SIDE,
            jpeg_quality: int = DEFAULT_QUALITY, num_workers: int = 1,
            seed: int = 0, progress: bool = True, overwrite: bool = False) -> dict:
  """Converts ``root`` into shards in ``out``; returns the metadata written.

  Args are the command line's flags (see ``python -m vivit_knn.data.convert
  --help``); ``progress`` shows a bar on a terminal and plain lines otherwise.

  Raises:
    FileNotFoundError: for a missing root or split file.
    ValueError: for an unknown class or a malformed line in a split file
      (naming the file); for an ``out`` that is a file or lies under one; for
      an ``out`` that holds a conversion with other options or sources, or
      unrecorded shards, unless ``overwrite``; for an ``out`` holding files
      named like the converter's outputs that it did not write (see
      :mod:`.manifest`).
  """
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--root={root} is not a directory")
  for name, value, low in (("num_shards", num_shards, 0), ("short_side", short_side, 0),
                           ("num_workers", num_workers, 0), ("jpeg_quality", jpeg_quality, 1)):
    if value < low:
      raise ValueError(f"--{name} must be at least {low}, got {value}")
  if jpeg_quality > 100:
    raise ValueError(f"--jpeg_quality must be at most 100, got {jpeg_quality}")
  check_out_folder(out)
  videos = list_videos(fmt, root, split, splits_dir, eval_fraction)
  # pylint: disable=g-import-not-at-top
  from vivit_knn.data import tfrecord
  from vivit_knn.data.convert import manifest, shards
  from vivit_knn.data.convert.progress import Progress
  # pylint: enable=g-import-not-at-top
  manifest.prepare(out, manifest.manifest(
      manifest.options(fmt, root, split=split, splits_dir=splits_dir,
                       eval_fraction=eval_fraction, num_shards=num_shards,
                       short_side=short_side, jpeg_quality=jpeg_quality, seed=seed),
      manifest.source_record(videos, root)), overwrite)
  train = list(zip(videos.train.paths, videos.train.labels))
  random.Random(seed).shuffle(train)
  test = list(zip(videos.test.paths, videos.test.labels))
  workers = num_workers or os.cpu_count() or 1
  pool = (multiprocessing.get_context("spawn").Pool(workers)
          if workers > 1 else None)
  meta = {"format": tfrecord.FORMAT, "version": tfrecord.VERSION,
          "source": fmt, "split": split if fmt != "folder" else None,
          "short_side": short_side, "jpeg_quality": jpeg_quality,
          "class_names": videos.class_names, "splits": {}}
  try:
    with Progress(len(train) + len(test), enabled=progress) as bar:
      for name, items in (("train", train), ("test", test)):
        count = num_shards or math.ceil(len(items) / VIDEOS_PER_SHARD)
        meta["splits"][name] = shards.write_split(
            out, name, len(items), count,
            lambda ids, items=items: _records(
                [items[i] for i in ids], videos.class_names, root,
                short_side, jpeg_quality, pool),
            bar, bar.resume)
  finally:
    if pool:
      pool.close()
      pool.join()
  for name, listed in (("train", videos.train), ("test", videos.test)):
    if listed.missing:
      meta["splits"][name]["skipped"].setdefault("missing", []).extend(
          listed.missing)
  shards.write_sidecars(out, meta)
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
