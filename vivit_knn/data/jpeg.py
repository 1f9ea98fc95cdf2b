"""JPEG encoding of frames for TFRecords (Pillow; no TensorFlow import).

Decoding lives in :mod:`vivit_knn.data.decode`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

DEFAULT_QUALITY = 90


def encode_jpeg(frame: np.ndarray, quality: int = DEFAULT_QUALITY) -> bytes:
  """JPEG bytes of one uint8 ``[H, W, 3]`` RGB frame."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(frame, np.uint8)).save(buffer, format="JPEG",
                                                    quality=quality)
  return buffer.getvalue()


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
  """Downscales ``frame`` so its short side is ``short_side``; never enlarges.

  Uses Pillow's antialiased bilinear filter; ``short_side <= 0`` keeps the
  frame as is.
  """
  height, width = frame.shape[:2]
  short = min(height, width)
  if short_side <= 0 or short <= short_side:
    return frame
  scale = short_side / short
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  if min(size) != short_side:  # Pin the short side against rounding.
    size = ((short_side, size[1]) if width <= height else
            (size[0], short_side))
  return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))
