"""Converts a public checkpoint to an Orbax checkpoint of its tree in our naming.

The command line (`__main__.py`):

    python -m vivit_knn.weights.convert --from=ViT-B_16.npz --format=vit_npz --to=vit_b16.orbax

The result is a valid source of format 'orbax' (`--config.init_from.checkpoint_path=
vit_b16.orbax`, or a CAST expert's checkpoint). Formats: 'vit_npz' (original
ViT), 'big_vision_npz', 'timm' (`.pth`/`.bin` need torch, `.safetensors` does
not), 'scenic' (a scenic/flax checkpoint file or workdir), 'clip' (OpenAI CLIP
image tower, TorchScript or state dict), 'videomae', 'orbax'. `--num_heads`
for timm / CLIP / VideoMAE widths whose head count cannot be guessed.

Beside the Orbax files the folder holds `vivit_knn_weights.json`, naming the
source and its format. An existing `--to` is refused unless `--overwrite` is
given, and even then it is replaced only when every file in it is one this
converter writes (that record, or Orbax checkpoint files): a folder holding
anything else, or a plain file, is never deleted. The new checkpoint is written
beside `--to` first and swapped in when complete. Errors are printed as one
`error: ...` message on stderr, with exit status 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any, Mapping, Optional

from vivit_knn.weights import load
from vivit_knn.weights.image_vit import infer_arch
from vivit_knn.weights.tree import flatten

MARKER_FILE = "vivit_knn_weights.json"
WRITER = "vivit_knn.weights.convert"
# What `load.save_orbax` (Orbax's StandardCheckpointer, OCDBT format) writes, as paths
# relative to the checkpoint folder.
_ORBAX_FILES = re.compile(
    r"(_CHECKPOINT_METADATA|_METADATA|_sharding|manifest\.ocdbt|commit_success\.txt"
    r"|d/[0-9a-f]+|ocdbt\.process_\d+/(manifest\.ocdbt|d/[0-9a-f]+)"
    r"|array_metadatas/process_\d+)")


def describe(tree: Mapping[str, Any]) -> str:
  """A one-line summary of a converted tree: its image ViT architecture, or its size."""
  try:
    return str(infer_arch(tree))
  except ValueError:
    flat = flatten(tree)
    count = sum(int(v.size) for v in flat.values())
    return f"{len(flat)} arrays, {count} parameters, top level {sorted(tree)}"


def _json_object(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      content = json.load(f)
  except (OSError, ValueError):
    return None
  return content if isinstance(content, dict) else None


def foreign_file(path: str) -> Optional[str]:
  """The first file at `path` this converter did not write, or None when there is none.

  A folder is ours when every file in it (at any depth) is the converter's record
  or a file of an Orbax checkpoint, and it holds that record or Orbax's own
  `_CHECKPOINT_METADATA`; an empty folder holds nothing to lose. A plain file or a
  link is never ours.

  Args:
    path: an existing `--to`.

  Returns:
    None, or the first foreign entry's path relative to `path` (its own name for a
    plain file or a link).
  """
  if os.path.islink(path) or not os.path.isdir(path):
    return os.path.basename(path)
  found = []
  for folder, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
      full = os.path.join(folder, name)
      rel = os.path.relpath(full, path).replace(os.sep, "/")
      if os.path.islink(full) or not (rel == MARKER_FILE or _ORBAX_FILES.fullmatch(rel)):
        return rel
      found.append(rel)
  if not found:
    return None
  marker = _json_object(os.path.join(path, MARKER_FILE)) or {}
  if marker.get("written_by") == WRITER:
    return None
  # Files merely named like Orbax's, without its own record of a checkpoint, are not one.
  if _json_object(os.path.join(path, "_CHECKPOINT_METADATA")) is not None:
    return None
  return found[0]


def _check_destination(dst: str, overwrite: bool) -> None:
  """Raises unless `dst` is free, or is our own earlier output and `overwrite` is set."""
  parent = os.path.dirname(dst)
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise NotADirectoryError(f"--to={dst} lies under {parent}, which is a file, not a folder")
  if not os.path.lexists(dst):
    return
  foreign = foreign_file(dst)
  if foreign is not None:
    raise FileExistsError(
        f"--to={dst} holds files this converter did not write (e.g. {foreign}); refusing to "
        "replace it: choose another --to, or move those files away first")
  if not overwrite:
    raise FileExistsError(f"--to={dst} already exists; pass --overwrite to replace it")


def convert(src: str, checkpoint_format: str, dst: str, overwrite: bool = False,
            num_heads: Optional[int] = None) -> str:
  """Converts `src` (in `checkpoint_format`) to an Orbax checkpoint at `dst`.

  Args:
    src: the checkpoint file (or scenic workdir).
    checkpoint_format: one of `formats.LOADABLE_FORMATS`.
    dst: the Orbax checkpoint directory to write.
    overwrite: replace an existing `dst` that holds only this converter's output
      (written beside it first, then swapped in).
    num_heads: the head count, for widths whose count cannot be guessed.

  Returns:
    A one-line summary of what was written.

  Raises:
    FileExistsError: `dst` exists and `overwrite` is False, or `dst` holds
      anything this converter does not write.
    NotADirectoryError: `dst` lies under a file.
    ValueError: whatever `load.load_checkpoint` raises for `src`.
  """
  dst = os.path.abspath(dst)
  _check_destination(dst, overwrite)
  tree = load.load_checkpoint(src, checkpoint_format, num_heads=num_heads, field="--from")
  summary = describe(tree)
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  # A folder of our own beside `dst`: a failed write leaves `dst` as it was, and
  # cleaning up removes only what this run created.
  work = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.converting-", dir=parent)
  try:
    written = load.save_orbax(os.path.join(work, "checkpoint"), tree)
    with open(os.path.join(written, MARKER_FILE), "w") as f:
      json.dump({"written_by": WRITER, "from": os.path.abspath(src),
                 "format": checkpoint_format, "num_heads": num_heads, "summary": summary},
                f, indent=1)
    previous = None
    if os.path.lexists(dst):
      _check_destination(dst, overwrite)  # again: files may have been added meanwhile
      previous = os.path.join(work, "previous")
      os.rename(dst, previous)
    try:
      os.rename(written, dst)
    except OSError:
      if previous:
        os.rename(previous, dst)
      raise
  finally:
    shutil.rmtree(work)
  return f"wrote {dst}: {summary}"
