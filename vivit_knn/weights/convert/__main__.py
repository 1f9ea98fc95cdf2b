"""Command line of the weight converter (`vivit-knn-convert-weights`); see `--help`."""

from __future__ import annotations

from typing import Sequence

from absl import flags

from vivit_knn import cli
from vivit_knn.weights import formats
from vivit_knn.weights.convert import convert

_FROM = flags.DEFINE_string("from", None, "Checkpoint file (or scenic workdir) to convert.")
_FORMAT = flags.DEFINE_string("format", None,
                              f"Format of --from: one of {', '.join(formats.LOADABLE_FORMATS)}.")
_TO = flags.DEFINE_string("to", None, "Output Orbax checkpoint directory.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace --to if it holds an earlier output of this converter (a "
    "folder holding anything else is never replaced).")
_NUM_HEADS = flags.DEFINE_integer("num_heads", None,
                                  "Heads (timm, clip, videomae; default from the width).")


def main(argv: Sequence[str]) -> None:
  """Converts --from to --to and prints what was written (errors: see `vivit_knn.cli`)."""
  del argv  # `cli.run` refuses stray arguments
  for flag in (_FROM, _FORMAT, _TO):
    if not flag.value:
      raise ValueError(f"--{flag.name} is required")
  if _FORMAT.value not in formats.LOADABLE_FORMATS:
    raise ValueError(f"--format must be one of {', '.join(formats.LOADABLE_FORMATS)}, got "
                     f"{_FORMAT.value!r}")
  print(convert(_FROM.value, _FORMAT.value, _TO.value, _OVERWRITE.value, _NUM_HEADS.value))


def run() -> None:
  """Console entry (``vivit-knn-convert-weights``): one-line errors, exit codes of the CLI."""
  cli.run(main)


if __name__ == "__main__":
  run()
