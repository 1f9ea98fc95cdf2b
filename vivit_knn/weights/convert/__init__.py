"""Converts a public checkpoint to an Orbax checkpoint of its tree in our naming.

The command line (`__main__.py`):

    python -m vivit_knn.weights.convert --from=ViT-B_16.npz --format=vit_npz --to=vit_b16.orbax

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
from typing import Any, Mapping, Optional

from vivit_knn.weights import load
from vivit_knn.weights.image_vit import infer_arch
from vivit_knn.weights.tree import flatten


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
  """Converts `src` (in `checkpoint_format`) to an Orbax checkpoint at `dst`.

  Args:
    src: the checkpoint file (or scenic workdir).
    checkpoint_format: one of `formats.LOADABLE_FORMATS`.
    dst: the Orbax checkpoint directory to write.
    overwrite: replace an existing `dst` (written beside it first, then swapped in).
    num_heads: the head count, for widths whose count cannot be guessed.

  Returns:
    A one-line summary of what was written.

  Raises:
    FileExistsError: `dst` exists and `overwrite` is False.
    ValueError: whatever `load.load_checkpoint` raises for `src`.
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
