"""Converts a public checkpoint to an Orbax checkpoint of its tree in our naming.

    python -m vivit_knn.weights.convert --from=ViT-B_16.npz --format=vit_npz \\
        --to=vit_b16.orbax

The result is a valid source of format 'orbax' (`--config.init_from.checkpoint_path=
vit_b16.orbax`, or a CAST expert's checkpoint). Formats: 'vit_npz' (original
ViT), 'big_vision_npz', 'timm' (`.pth`/`.bin` need torch, `.safetensors` does
not), 'scenic' (a scenic/flax checkpoint file or workdir), 'clip' (OpenAI CLIP
image tower, TorchScript or state dict), 'videomae', 'orbax'. `--num_heads`
for timm / CLIP / VideoMAE widths whose head count cannot be guessed.

An existing `--to` is refused unless `--overwrite` is given. Errors are printed
as one `error: ...` message on stderr, with exit status 2.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Mapping, Optional, Sequence

from absl import flags

from vivit_knn import cli
from vivit_knn.weights import formats, load
from vivit_knn.weights.image_vit import infer_arch
from vivit_knn.weights.tree import flatten

_FROM = flags.DEFINE_string("from", None, "Checkpoint file (or scenic workdir) to convert.")
_FORMAT = flags.DEFINE_string("format", None,
                              f"Format of --from: one of {', '.join(formats.LOADABLE_FORMATS)}.")
_TO = flags.DEFINE_string("to", None, "Output Orbax checkpoint directory.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --to if it exists.")
_NUM_HEADS = flags.DEFINE_integer("num_heads", None,
                                  "Heads (timm, clip, videomae; default from the width).")


class _UsageError(ValueError):
  """A bad command line."""


def describe(tree: Mapping[str, Any]) -> str:
  """A one-line summary of a converted tree: its image ViT architecture, or its size."""
  try:
    return str(infer_arch(tree))
  except ValueError:
    flat = flatten(tree)
    count = sum(int(v.size) for v in flat.values())
    return f"{len(flat)} arrays, {count} parameters, top level {sorted(tree)}"


def _replace(tmp: str, dst: str) -> None:
  """Moves the finished checkpoint `tmp` to `dst`, removing what `dst` held."""
  if os.path.isdir(dst) and not os.path.islink(dst):
    shutil.rmtree(dst)
  elif os.path.lexists(dst):
    os.remove(dst)
  os.replace(tmp, dst)


def convert(src: str, checkpoint_format: str, dst: str, overwrite: bool = False,
            num_heads: Optional[int] = None) -> str:
  """Converts `src` (in `checkpoint_format`) to an Orbax checkpoint at `dst`; returns a summary.

  Raises:
    FileExistsError: `dst` exists and `overwrite` is False.
    (and whatever `load.load_checkpoint` raises for `src`)
  """
  dst = os.path.abspath(dst)
  if os.path.lexists(dst) and not overwrite:
    raise FileExistsError(f"--to={dst} already exists; pass --overwrite to replace it")
  tree = load.load_checkpoint(src, checkpoint_format, num_heads=num_heads, field="--from")
  if not os.path.lexists(dst):
    load.save_orbax(dst, tree)
  else:  # write beside it first, so a failed write leaves the old checkpoint in place
    tmp = f"{dst}.converting-{os.getpid()}"
    if os.path.lexists(tmp):
      shutil.rmtree(tmp)
    load.save_orbax(tmp, tree)
    _replace(tmp, dst)
  return f"wrote {dst}: {describe(tree)}"


def main(argv: Sequence[str]) -> None:
  """Converts --from to --to and prints what was written (errors: see `vivit_knn.cli`)."""
  if len(argv) > 1:
    raise _UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  for flag in (_FROM, _FORMAT, _TO):
    if not flag.value:
      raise _UsageError(f"--{flag.name} is required")
  if _FORMAT.value not in formats.LOADABLE_FORMATS:
    raise _UsageError(f"--format must be one of {', '.join(formats.LOADABLE_FORMATS)}, got "
                      f"{_FORMAT.value!r}")
  print(convert(_FROM.value, _FORMAT.value, _TO.value, _OVERWRITE.value, _NUM_HEADS.value))


if __name__ == "__main__":
  cli.run(main)
