"""Converts a public checkpoint to an Orbax checkpoint of its tree in our naming.

    python -m vivit_knn.weights.convert --from=ViT-B_16.npz --format=vit_npz --to=vit_b16.orbax

The result is a source of format 'orbax' (`init_from.checkpoint_path`, or a CAST
expert's). Beside the Orbax files the folder holds `vivit_knn_weights.json`,
naming the source and its format. An existing `--to` is replaced only with
`--overwrite`, and only when every file in it is one this converter writes; the
new checkpoint is written beside `--to` and swapped in when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Mapping, Optional

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


def json_object(path: str) -> Optional[dict]:
  """The JSON object in the file at `path`, or None (unreadable, not JSON, or not an object)."""
  try:
    with open(path) as f:
      content = json.load(f)
  except (OSError, ValueError):
    return None
  return content if isinstance(content, dict) else None


def foreign_file(path: str) -> Optional[str]:
  """The first entry of an existing `--to` this converter did not write (relative), or None.

  A folder is ours when every file in it (at any depth) is the converter's record
  or a file of an Orbax checkpoint, and it holds that record or Orbax's own
  `_CHECKPOINT_METADATA`; an empty folder holds nothing to lose. A plain file or a
  link is never ours (its own name is returned).
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
  marker = json_object(os.path.join(path, MARKER_FILE)) or {}
  if marker.get("written_by") == WRITER:
    return None
  # Files merely named like Orbax's, without its own record of a checkpoint, are not one.
  if json_object(os.path.join(path, "_CHECKPOINT_METADATA")) is not None:
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
  """Converts `src` (a file or scenic workdir in `checkpoint_format`) to Orbax at `dst`.

  `overwrite` replaces an existing `dst` that holds only this converter's output;
  `num_heads` is for widths whose head count cannot be guessed. Returns a one-line
  summary of what was written.
  """
  dst = os.path.abspath(dst)
  _check_destination(dst, overwrite)
  tree = load.load_checkpoint(src, checkpoint_format, num_heads=num_heads, field="--from")
  summary = describe(tree)

  def write(work: str) -> str:
    written = load.save_orbax(os.path.join(work, "checkpoint"), tree)
    with open(os.path.join(written, MARKER_FILE), "w") as f:
      json.dump({"written_by": WRITER, "from": os.path.abspath(src),
                 "format": checkpoint_format, "num_heads": num_heads, "summary": summary},
                f, indent=1)
    return written

  swap_in(dst, "converting", write, lambda: _check_destination(dst, overwrite))
  return f"wrote {dst}: {summary}"


def swap_in(dst: str, tag: str, write: Callable[[str], str], recheck: Callable[[], None]) -> None:
  """Writes a new `dst` in a folder beside it, then swaps it in for any existing `dst`.

  `write(folder)` writes into a fresh folder beside `dst` and returns the path of
  what it wrote there; `recheck()` runs again just before an existing `dst` is
  moved away (files may have been added meanwhile). A failed write leaves `dst`
  as it was, and cleaning up removes only what this call created.
  """
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  work = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.{tag}-", dir=parent)
  try:
    written = write(work)
    previous = None
    if os.path.lexists(dst):
      recheck()
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
