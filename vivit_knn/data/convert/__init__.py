"""Converting videos as published into DMVR TFRecord shards, on Apache Beam.

  python -m vivit_knn.data.convert --format=ucf101|hmdb51 --root=<dir> --split=1 --out=<dir>
  python -m vivit_knn.data.convert --format=folder --root=<dir> --out=<dir>
  python -m vivit_knn.data.convert --format=kinetics|ssv2|ek100 --annotations=<files> \
      --root=<videos> --out=<dir>

A format reader lists each split's examples (:mod:`.listing`); one Beam pipeline
(:mod:`.pipeline`, any runner, locally ``--num_workers`` processes) decodes them,
downscales every frame to ``--short_side`` and writes ``train.tfrecord-*`` and
``test.tfrecord-*`` (one ``SequenceExample`` per video or segment, frames as
JPEG; ``test`` is the official test list of UCF101 and HMDB51, the validation
set of the others), ``classes.txt`` and ``metadata.json``. Train examples are
shuffled once (``--seed``); the records do not depend on the runner or workers.

A rerun resumes, skipping finished shards; ``<out>/conversion.json``
(:mod:`.manifest`) refuses a rerun with other options or sources unless
``--overwrite``. Videos that are missing or cannot be decoded are skipped,
counted and listed. Train on the output with ``--config.dataset.data_dir=<out>``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import threading

from vivit_knn.data import splits
from vivit_knn.data.convert.listing import SPLITS, Example, Listing
from vivit_knn.data.convert.pipeline import (DEFAULT_QUALITY, DEFAULT_SHORT_SIDE, DIRECT,
                                             Encoding, ShardJob, encode_jpeg,
                                             resize_short_side)

__all__ = ["FORMATS", "convert", "summary", "list_examples", "encode_jpeg",
           "resize_short_side", "DEFAULT_QUALITY", "DEFAULT_SHORT_SIDE", "VIDEOS_PER_SHARD"]

FORMATS = ("ucf101", "hmdb51", "folder", "kinetics", "ssv2", "ek100")
# Formats whose annotations are not in --root: --annotations is required.
ANNOTATED = ("kinetics", "ssv2", "ek100")
# Shards of ~256 videos keep UCF101/HMDB51 shards at a few hundred MB.
VIDEOS_PER_SHARD = 256
# Skipped videos printed per reason and split (metadata.json lists them all).
_LISTED_SKIPS = 20
# How often the driver looks for finished shards to report progress.
_PROGRESS_POLL_S = 0.5


def _from_video_splits(videos: splits.VideoSplits, root: str) -> Listing:
  """A :class:`Listing` of the UCF101 / HMDB51 / class-folder lists."""
  def examples(listed):
    return [Example(path, label, videos.class_names[label], os.path.relpath(path, root))
            for path, label in zip(listed.paths, listed.labels)]
  return Listing(list(videos.class_names),
                 {"train": examples(videos.train), "test": examples(videos.test)},
                 {"train": list(videos.train.missing), "test": list(videos.test.missing)})


def list_examples(fmt: str, root: str, *, annotations: str = "", split: int = 1,
                  eval_fraction: float = 0.1) -> Listing:
  """The examples of each split of the input layout (nothing is decoded)."""
  if fmt == "ucf101":
    return _from_video_splits(splits.ucf101(root, split, annotations), root)
  if fmt == "hmdb51":
    return _from_video_splits(splits.hmdb51(root, split, annotations), root)
  if fmt == "folder":
    return _from_video_splits(splits.class_folders(root, eval_fraction), root)
  # pylint: disable=g-import-not-at-top
  from vivit_knn.data.convert import ek100, kinetics, ssv2
  # pylint: enable=g-import-not-at-top
  reader = {"kinetics": kinetics.read, "ssv2": ssv2.read, "ek100": ek100.read}[fmt]
  return reader(annotations, root)


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


def _check_options(fmt: str, root: str, annotations: str, numbers: dict) -> None:
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
  if "://" not in root and not os.path.isdir(root):
    raise FileNotFoundError(f"--root={root} is not a directory")
  if fmt in ANNOTATED and not annotations:
    raise ValueError(f"--format={fmt} needs --annotations=<its annotation files>")
  if fmt == "folder" and annotations:
    raise ValueError("--annotations cannot take effect with --format=folder (the class "
                     "folders are the labels); leave it out")
  for name, (value, low, high) in numbers.items():
    if value < low or (high is not None and value > high):
      bound = f"at least {low}" if value < low else f"at most {high}"
      raise ValueError(f"--{name} must be {bound}, got {value}")


def _shard_jobs(out: str, listing: Listing, num_shards: int, seed: int) -> dict:
  """``{split: [ShardJob...]}``: train shuffled once with ``seed``, contiguous shards."""
  from vivit_knn.data.convert import shards  # pylint: disable=g-import-not-at-top
  jobs = {}
  for name in SPLITS:
    items = list(listing.splits.get(name, []))
    if name == "train":
      random.Random(seed).shuffle(items)
    count = max(1, min(num_shards or math.ceil(len(items) / VIDEOS_PER_SHARD), len(items)))
    jobs[name] = [ShardJob(out, shard, tuple(items[i] for i in ids))
                  for shard, ids in zip(shards.shard_names(name, count),
                                        shards.partition(len(items), count))]
  return jobs


def _report_progress(bar, pending, reported: set, stop: threading.Event) -> None:
  """Adds each pending shard's examples to ``bar`` once it is finished, until ``stop``."""
  from vivit_knn.data.convert import shards  # pylint: disable=g-import-not-at-top
  while not stop.wait(_PROGRESS_POLL_S):
    for job in pending:
      if job.name not in reported and shards.finished_stats(job.out_dir, job.name):
        reported.add(job.name)
        bar(len(job.examples))


def convert(fmt: str, root: str, out: str, *, annotations: str = "", split: int = 1,
            eval_fraction: float = 0.1, num_shards: int = 0, short_side: int = DEFAULT_SHORT_SIDE,
            jpeg_quality: int = DEFAULT_QUALITY, num_workers: int = 1, seed: int = 0,
            progress: bool = True, overwrite: bool = False, runner: str = DIRECT,
            pipeline_args: tuple[str, ...] = (), quiet: bool = True) -> dict:
  """Converts the dataset at ``root`` into shards in ``out``; returns the metadata written.

  Args are the command line's flags; ``progress`` shows a bar on a terminal and
  plain lines otherwise; ``pipeline_args`` are further Beam pipeline options;
  ``quiet`` keeps Beam's log lines off the terminal unless the pipeline fails.

  FileNotFoundError for a missing root or annotation file; ValueError for malformed
  annotations, a bad option, an ``out`` that is (or lies under) a file or that
  :func:`.manifest.prepare` refuses, or a pipeline option Beam does not know.
  """
  _check_options(fmt, root, annotations, {
      "num_shards": (num_shards, 0, None), "short_side": (short_side, 0, None),
      "num_workers": (num_workers, 0, None), "jpeg_quality": (jpeg_quality, 1, 100)})
  check_out_folder(out)
  # pylint: disable=g-import-not-at-top
  from vivit_knn.data import tfrecord
  from vivit_knn.data.convert import manifest, pipeline, shards
  from vivit_knn.data.convert.progress import Progress
  # pylint: enable=g-import-not-at-top
  options = pipeline.pipeline_options(runner, num_workers, pipeline_args)
  listing = list_examples(fmt, root, annotations=annotations, split=split,
                          eval_fraction=eval_fraction)
  manifest.prepare(out, manifest.manifest(
      manifest.options(fmt, root, annotations=annotations, split=split, eval_fraction=eval_fraction,
                       num_shards=num_shards, short_side=short_side, jpeg_quality=jpeg_quality,
                       seed=seed), manifest.source_record(listing, root)), overwrite)
  jobs = _shard_jobs(out, listing, num_shards, seed)
  for name, split_jobs in jobs.items():
    shards.remove_stale_shards(out, name, [job.name for job in split_jobs])
  every = [job for split_jobs in jobs.values() for job in split_jobs]
  pending = [job for job in every if shards.finished_stats(out, job.name) is None]
  # The progress lines go to a copy of stderr: the pipeline sends stderr itself to its log.
  stream = os.fdopen(os.dup(sys.stderr.fileno()), "w") if quiet else sys.stderr
  with stream if quiet else contextlib.nullcontext(), Progress(
      sum(len(job.examples) for job in every), enabled=progress, file=stream) as bar:
    bar.resume(sum(len(job.examples) for job in every if job not in pending))
    stop, reported = threading.Event(), set()
    watcher = threading.Thread(target=_report_progress, args=(bar, pending, reported, stop),
                               daemon=True)
    watcher.start()
    try:
      pipeline.run(pending, Encoding(short_side, jpeg_quality), options, quiet=quiet)
    finally:
      stop.set()
      watcher.join()
    unreported = sum(len(job.examples) for job in pending if job.name not in reported)
    if unreported:
      bar(unreported)
  meta = {"format": tfrecord.FORMAT, "version": tfrecord.VERSION, "source": fmt,
          "split": split if fmt in ("ucf101", "hmdb51") else None,
          "short_side": short_side, "jpeg_quality": jpeg_quality,
          "class_names": listing.class_names, "splits": {}}
  if listing.label_sets:
    meta["label_sets"] = listing.label_sets
  for name, split_jobs in jobs.items():
    meta["splits"][name] = shards.split_stats(out, [job.name for job in split_jobs])
    if listing.missing.get(name):
      meta["splits"][name]["skipped"].setdefault("missing", []).extend(listing.missing[name])
  meta["notes"] = list(listing.notes)
  shards.write_sidecars(out, meta)
  return meta


def summary(meta: dict) -> str:
  """One-paragraph report of a conversion."""
  lines = [f"classes: {len(meta['class_names'])}"]
  for name, sizes in meta.get("label_sets", {}).items():
    lines.append(f"{name} classes: {len(sizes)}")
  for name, split in meta["splits"].items():
    skipped = {r: len(v) for r, v in split["skipped"].items()}
    lines.append(f"{name}: {split['num_examples']} videos in "
                 f"{len(split['shards'])} shards; skipped "
                 f"{sum(skipped.values())} {skipped or ''}".rstrip())
    for reason, details in sorted(split["skipped"].items()):
      lines.extend(f"  skipped ({reason}): {d}" for d in details[:_LISTED_SKIPS])
      if len(details) > _LISTED_SKIPS:
        lines.append(f"  ... and {len(details) - _LISTED_SKIPS} more skipped ({reason}), "
                     f"all listed in metadata.json")
  lines.extend(f"note: {note}" for note in meta.get("notes", []))
  return "\n".join(lines)
