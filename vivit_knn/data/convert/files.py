"""File access for the annotation readers: local folders and remote storage alike.

The Kinetics, Something-Something v2 and EPIC-KITCHENS-100 readers list and
read through TensorFlow's file systems, so ``--annotations`` and ``--root``
may be ``gs://`` paths as well as local folders (the driver loads TensorFlow
anyway, for the output folder's records).
"""

from __future__ import annotations

import io
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
