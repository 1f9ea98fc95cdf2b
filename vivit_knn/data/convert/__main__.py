"""Command line of the converter: ``python -m vivit_knn.data.convert --help``.

See :mod:`vivit_knn.data.convert` for the layouts it reads and what it writes.
Installed as a package, the same command is ``vivit-knn-convert-videos``.
Flags the converter does not define are Apache Beam pipeline options, passed
to the runner (e.g. ``--runner=DataflowRunner --project=... --region=...
--temp_location=gs://...``); a flag that is neither is refused.
"""

from __future__ import annotations

from absl import app, flags

from vivit_knn import cli
from vivit_knn.data.convert import (DEFAULT_QUALITY, DEFAULT_SHORT_SIDE, FORMATS,
                                    VIDEOS_PER_SHARD, convert, summary)

_FORMAT = flags.DEFINE_enum("format", None, FORMATS, "Input layout.")
_ROOT = flags.DEFINE_string("root", None, "Folder of the videos.")
_ANNOTATIONS = flags.DEFINE_string(
    "annotations", "", "Annotation file or folder: kinetics: a CSV or a folder of them; ssv2: "
    "the labels/ folder; ek100: the folder of EPIC_100_*.csv; ucf101/hmdb51: the split-file "
    "folder (default: the standard one in --root).")
_OUT = flags.DEFINE_string("out", None, "Output folder for the shards.")
_SPLIT = flags.DEFINE_integer("split", 1, "Official split (ucf101, hmdb51).")
_EVAL_FRACTION = flags.DEFINE_float(
    "eval_fraction", 0.1, "format=folder without train/test folders: share "
    "of each class held out for the test split.")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", 0, f"Shards per split; 0 = one per {VIDEOS_PER_SHARD} videos.")
_SHORT_SIDE = flags.DEFINE_integer(
    "short_side", DEFAULT_SHORT_SIDE, "Downscale frames to this short side "
    "(never enlarges); 0 keeps the original size.")
_QUALITY = flags.DEFINE_integer("jpeg_quality", DEFAULT_QUALITY, "JPEG quality.")
_RUNNER = flags.DEFINE_string(
    "runner", "direct", "Apache Beam runner: 'direct' runs on this machine with --num_workers "
    "processes; or a Beam runner name (DataflowRunner, FlinkRunner, SparkRunner...), whose "
    "own pipeline options go on the same command line.")
_WORKERS = flags.DEFINE_integer(
    "num_workers", 0, "--runner=direct: worker processes; 0 = one per CPU, 1 = in-process.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the train order shuffle.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an earlier conversion in --out made with other options or "
    "sources (without it such a rerun stops, naming the differences; a rerun with the same "
    "options resumes). Only the converter's own files are removed; others in --out are kept.")


def main(argv) -> int:
  """Runs the conversion described by the flags; other ``--`` flags go to Beam."""
  for flag in (_FORMAT, _ROOT, _OUT):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required")
  strays = [a for a in argv[1:] if not a.startswith("--")]
  if strays:
    raise app.UsageError(f"unexpected argument {strays[0]!r}: every option is a "
                         "--name=value flag (see --help)")
  meta = convert(_FORMAT.value, _ROOT.value, _OUT.value, annotations=_ANNOTATIONS.value,
                 split=_SPLIT.value, eval_fraction=_EVAL_FRACTION.value,
                 num_shards=_NUM_SHARDS.value, short_side=_SHORT_SIDE.value,
                 jpeg_quality=_QUALITY.value, num_workers=_WORKERS.value, seed=_SEED.value,
                 overwrite=_OVERWRITE.value, runner=_RUNNER.value,
                 pipeline_args=tuple(argv[1:]), quiet=not cli.verbose())
  print(summary(meta))
  print(f"wrote {_OUT.value}; train with --config.dataset.data_dir={_OUT.value}")
  return 0


def run() -> None:
  """Console entry (``vivit-knn-convert-videos``): one-line errors, exit codes of the CLI."""
  cli.run(main, pass_unknown_flags=True)


if __name__ == "__main__":
  run()
