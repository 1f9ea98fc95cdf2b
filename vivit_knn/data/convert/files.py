"""File access for the annotation readers through TensorFlow's file systems.

So ``--annotations`` and ``--root`` of Kinetics, Something-Something v2 and
EPIC-KITCHENS-100 may be ``gs://`` paths as well as local folders.
"""

from __future__ import annotations

import csv
import io
import os

import tensorflow as tf

isdir = tf.io.gfile.isdir
# ``(folder, subfolders, files)`` top down; sorting ``subfolders`` in place orders the walk.
walk = tf.io.gfile.walk


def isfile(path: str) -> bool:
  """Whether ``path`` is a file."""
  return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def listdir(path: str) -> list[str]:
  """The names in folder ``path``."""
  return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]


def open_text(path: str) -> io.StringIO:
  """The text of ``path`` (UTF-8, a byte-order mark dropped), as a file for csv/json."""
  with tf.io.gfile.GFile(path, "rb") as f:
    return io.StringIO(f.read().decode("utf-8-sig"), newline="")


def csv_rows(path: str, required) -> list[tuple[int, dict[str, str]]]:
  """``(line number, row)`` of every data row of a CSV file with a header.

  Columns are found by name (extra ones kept), values stripped, blank lines skipped.
  ValueError names the line of a missing ``required`` column or of a row of another length.
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
  """The folder of ``annotations`` (a file in it, or the folder itself), and ``root``, checked."""
  if isfile(annotations):
    annotations = os.path.dirname(annotations) or "."
  if not isdir(annotations):
    raise FileNotFoundError(f"{dataset} {what} {annotations} does not exist")
  if not isdir(root):
    raise FileNotFoundError(f"{dataset} video folder {root} does not exist")
  return annotations
