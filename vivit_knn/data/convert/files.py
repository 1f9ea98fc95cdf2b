"""File access for the annotation readers: local folders and remote storage alike.

The Kinetics, Something-Something v2 and EPIC-KITCHENS-100 readers list and
read through TensorFlow's file systems, so ``--annotations`` and ``--root``
may be ``gs://`` paths as well as local folders (the driver loads TensorFlow
anyway, for the output folder's records).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator

import tensorflow as tf


def exists(path: str) -> bool:
  """Whether ``path`` names a file or a folder."""
  return tf.io.gfile.exists(path)


def isdir(path: str) -> bool:
  """Whether ``path`` is a folder."""
  return tf.io.gfile.isdir(path)


def isfile(path: str) -> bool:
  """Whether ``path`` is a file."""
  return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def listdir(path: str) -> list[str]:
  """The names in folder ``path``."""
  return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]


def walk(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
  """``(folder, subfolders, files)`` of every folder under ``root``, top down.

  Sorting ``subfolders`` in place orders the folders visited next, as with ``os.walk``.
  """
  yield from tf.io.gfile.walk(root)


def open_text(path: str) -> io.StringIO:
  """The text of ``path`` (UTF-8, a byte-order mark dropped), as a file for csv/json."""
  with tf.io.gfile.GFile(path, "rb") as f:
    return io.StringIO(f.read().decode("utf-8-sig"), newline="")


def csv_rows(path: str, required) -> list[tuple[int, dict[str, str]]]:
  """``(line number, row)`` of every data row of a CSV file with a header.

  Columns are found by name (extra ones are kept), values stripped, blank
  lines skipped.

  Raises:
    ValueError: naming the file and line of a missing ``required`` column or
      a row whose field count differs from the header's.
  """
  with open_text(path) as f:
    reader = csv.DictReader(f)
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    absent = [name for name in required if name not in header]
    if absent:
      raise ValueError(f"{path}:1: missing column(s) {', '.join(absent)} "
                       f"in header {','.join(header)!r}")
    rows = []
    for row in reader:
      if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
        continue
      if None in row or any(row[name] is None for name in header):
        raise ValueError(f"{path}:{reader.line_num}: expected {len(header)} fields as in "
                         "the header")
      rows.append((reader.line_num, {name: row[name].strip() for name in header}))
  return rows


def annotation_folder(annotations: str, root: str, dataset: str, what: str) -> str:
  """The folder of ``annotations`` (a file in it, or the folder itself).

  Raises:
    FileNotFoundError: naming the annotations folder (``what``) or the video
      folder ``root`` of ``dataset`` when either does not exist.
  """
  if isfile(annotations):
    annotations = os.path.dirname(annotations) or "."
  if not isdir(annotations):
    raise FileNotFoundError(f"{dataset} {what} {annotations} does not exist")
  if not isdir(root):
    raise FileNotFoundError(f"{dataset} video folder {root} does not exist")
  return annotations
