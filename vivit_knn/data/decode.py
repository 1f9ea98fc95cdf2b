"""Decoding stored frames (JPEG, PNG) of sampled frames only.

TensorFlow's image decoders are called eagerly, from inside the pipeline's
``tf.numpy_function``: they are faster than Pillow's here, release the GIL,
and a damaged image raises a Python exception that can be counted and
skipped, where a graph-mode decode error would end the tf.data pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from vivit_knn.data import skips

_JPEG_MAGIC = b"\xff\xd8"
# Eager op errors carry "{{function_node ...}}" and "[Op:...]" decorations.
_OP_NOISE = re.compile(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]")


def decode_image(data: bytes) -> np.ndarray:
  """uint8 ``[H, W, 3]`` of one encoded frame (JPEG fast path)."""
  if data[:2] == _JPEG_MAGIC:
    image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_FAST")
  else:
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
  return image.numpy()


def decode_frames(encoded: Sequence[bytes], source: str) -> np.ndarray:
  """Decodes frames into uint8 ``[n, H, W, 3]``.

  Raises:
    BadVideoError: ``bad_jpeg`` if a frame does not decode or the frames
      differ in size.
  """
  frames = []
  for i, data in enumerate(encoded):
    try:
      frames.append(decode_image(data))
    except (tf.errors.InvalidArgumentError, ValueError) as err:
      detail = _OP_NOISE.sub("", getattr(err, "message", str(err)))
      raise skips.BadVideoError(skips.BAD_JPEG, source,
                                f"frame {i}: {detail}") from err
  if len({f.shape for f in frames}) > 1:
    raise skips.BadVideoError(skips.BAD_JPEG, source,
                              "frames differ in size")
  return np.stack(frames)
