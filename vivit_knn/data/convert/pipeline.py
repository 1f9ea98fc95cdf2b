"""The conversion pipeline, on Apache Beam: one element per shard.

A worker decodes each video (or segment) of its shard, downscales and JPEG-encodes every
frame and writes the shard (:func:`.shards.write_shard`). So a shard's bytes depend only on
its examples and the encoding, and a worker holds one decoded video at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

# Importing Beam warns that its optional Google Cloud clients are absent; only
# Dataflow needs them, and Dataflow's workers have them.
_DISABLED = logging.root.manager.disable
logging.disable(logging.WARNING)
try:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  from apache_beam.options import pipeline_options as beam_options  # pylint: disable=g-import-not-at-top
finally:
  logging.disable(_DISABLED)

from vivit_knn.data import record_format, skips, video_io
from vivit_knn.data.convert import shards
from vivit_knn.data.convert.listing import Example

DEFAULT_SHORT_SIDE = 256
DEFAULT_QUALITY = 90
DIRECT = "direct"


@dataclasses.dataclass(frozen=True)
class Encoding:
  """How frames are stored: short side in pixels (0 keeps it) and JPEG quality."""

  short_side: int = DEFAULT_SHORT_SIDE
  jpeg_quality: int = DEFAULT_QUALITY


@dataclasses.dataclass(frozen=True)
class ShardJob:
  """One element of the pipeline: the examples of one shard, in record order."""

  out_dir: str
  name: str
  examples: tuple[Example, ...]


def encode_jpeg(frame: np.ndarray, quality: int = DEFAULT_QUALITY) -> bytes:
  """JPEG bytes of one uint8 ``[H, W, 3]`` RGB frame."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(frame, np.uint8)).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
  """Downscales ``frame`` to short side ``short_side`` (bilinear); never enlarges, 0 keeps it."""
  height, width = frame.shape[:2]
  short = min(height, width)
  if short_side <= 0 or short <= short_side:
    return frame
  scale = short_side / short
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  if min(size) != short_side:  # Pin the short side against rounding.
    size = (short_side, size[1]) if width <= height else (size[0], short_side)
  return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


def _open_remote(path: str):
  return FileSystems.open(path, mime_type="application/octet-stream")


def _frames(example: Example) -> Iterator[np.ndarray]:
  """The frames of ``example``: the whole video, or the segment it names."""
  remote = "://" in example.path
  if example.start_s is not None:
    yield from video_io.iter_segment(example.path, example.start_s, example.end_s,
                                     _open_remote if remote else None)
    return
  if not remote:
    yield from video_io.read_video(example.path)
    return
  if not FileSystems.exists(example.path):
    raise skips.BadVideoError(skips.MISSING, example.path, "no such file")
  # Whole short clips: a local copy lets the reader check the stream's length.
  suffix = os.path.splitext(example.path)[1]
  with tempfile.NamedTemporaryFile(suffix=suffix) as local:
    with _open_remote(example.path) as source:
      local.write(source.read())
    local.flush()
    yield from video_io.read_video(local.name)


def transcode(example: Example, encoding: Encoding) -> tuple:
  """``('ok', serialized record)`` of ``example``, or ``('skip', reason, detail)``.

  Only a video that cannot give frames is a skip; any other error propagates.
  """
  try:
    jpegs = [encode_jpeg(resize_short_side(frame, encoding.short_side), encoding.jpeg_quality)
             for frame in _frames(example)]
  except skips.BadVideoError as err:
    return ("skip", err.reason, str(err))
  return ("ok", record_format.make_sequence_example(jpegs, example.label, example.label_text,
                                               example.name, example.label_sets))


class WriteShard(beam.DoFn):
  """Writes the shard of a :class:`ShardJob`; emits the shard's name."""

  def __init__(self, encoding: Encoding):
    super().__init__()
    self._encoding = encoding

  def process(self, job: ShardJob):
    """Transcodes the job's examples in order and writes them as one shard."""
    results = (transcode(example, self._encoding) for example in job.examples)
    shards.write_shard(job.out_dir, job.name, results)
    yield job.name


def pipeline_options(runner: str, num_workers: int,
                     extra_args: Sequence[str]) -> beam_options.PipelineOptions:
  """Beam options: ``direct`` runs locally on ``num_workers`` processes (0 = all cores).

  Any other ``runner`` (e.g. ``DataflowRunner``) gets ``extra_args``, its own flags.
  ValueError names the arguments that are no Beam pipeline option.
  """
  workers = num_workers or os.cpu_count() or 1
  if runner == DIRECT:
    args = ["--runner=DirectRunner", f"--direct_num_workers={workers}",
            "--direct_running_mode=" + ("in_memory" if workers == 1 else "multi_processing")]
  else:
    args = [f"--runner={runner}"]
  options = beam_options.PipelineOptions(list(args) + list(extra_args))
  # Beam logs a warning of its own for the unknown arguments; ours names them as flags.
  checker = logging.getLogger(beam_options.__name__)
  level = checker.level
  checker.setLevel(logging.ERROR)
  try:
    known = options.get_all_options(retain_unknown_options=False)
    unknown = [name for name in options.get_all_options(retain_unknown_options=True)
               if name not in known]
  finally:
    checker.setLevel(level)
  if unknown:
    raise ValueError(
        f"unknown flag{'s' if len(unknown) > 1 else ''} "
        f"{', '.join('--' + name for name in unknown)}: neither a converter flag nor an "
        "Apache Beam pipeline option (see --help)")
  if runner == DIRECT:
    # Workers log at INFO by default; their progress is the converter's own line.
    options.view_as(beam_options.WorkerOptions).default_sdk_harness_log_level = "WARNING"
  return options


@contextlib.contextmanager
def _worker_output_to_file(tail_lines: int = 20):
  """Sends fd 2 (Beam's log lines, which would bury the progress) to a file, shown on failure."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile("w+") as log:
    os.dup2(log.fileno(), 2)
    failed = True
    try:
      yield
      failed = False
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if failed:
        log.seek(0)
        lines = log.read().splitlines()[-tail_lines:]
        if lines:
          print("last lines of the conversion workers' log:", *lines, sep="\n  ", file=sys.stderr)


def run(jobs: Sequence[ShardJob], encoding: Encoding, options: beam_options.PipelineOptions,
        quiet: bool = True) -> None:
  """Writes every shard of ``jobs`` with Beam; ``quiet`` sends Beam's log lines to a file."""
  if not jobs:
    return
  with _worker_output_to_file() if quiet else contextlib.nullcontext():
    with beam.Pipeline(options=options) as pipeline:
      _ = (pipeline
           | "Shards" >> beam.Create(list(jobs), reshuffle=False)
           # Spreads the shards over the workers (Create alone is fused into one).
           | "Spread" >> beam.Reshuffle()
           | "Write" >> beam.ParDo(WriteShard(encoding)))
