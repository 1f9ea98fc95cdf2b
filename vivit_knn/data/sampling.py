"""Which frames of a video make a clip: random train windows, linspace test clips.

Indices are chosen before any frame is decoded, so readers decode only the
frames they return. A clip of ``num_frames`` frames taken every ``stride``
frames spans ``(num_frames - 1) * stride + 1`` frames; videos shorter than
that are looped (indices wrap around), as in DMVR.
"""

from __future__ import annotations

import numpy as np


def clip_span(num_frames: int, stride: int) -> int:
  """Number of consecutive source frames one clip covers."""
  return (num_frames - 1) * stride + 1


def _check(num_available: int) -> None:
  if num_available < 1:
    raise ValueError(f"a video needs at least one frame, got {num_available}")


def train_indices(num_available: int, num_frames: int, stride: int,
                  rng: np.random.Generator) -> np.ndarray:
  """Frame indices of one random clip: ``int64 [num_frames]``.

  The window start is uniform over all positions where the clip fits; a
  video shorter than the window starts anywhere and wraps around.
  """
  _check(num_available)
  span = clip_span(num_frames, stride)
  if num_available >= span:
    start = rng.integers(0, num_available - span + 1)
  else:
    start = rng.integers(0, num_available)
  return (start + np.arange(num_frames) * stride) % num_available


def test_indices(num_available: int, num_frames: int, stride: int,
                 num_clips: int) -> np.ndarray:
  """Frame indices of ``num_clips`` evenly spread clips, concatenated.

  Returns ``int64 [num_clips * num_frames]``. Clip starts are
  ``linspace(0, last_start, num_clips)`` rounded down; a single clip is
  centred in time.
  """
  _check(num_available)
  span = clip_span(num_frames, stride)
  last_start = max(num_available - span, 0)
  if num_clips == 1:
    starts = np.array([last_start // 2])
  else:
    starts = np.floor(np.linspace(0, last_start, num_clips)).astype(np.int64)
  offsets = np.arange(num_frames) * stride
  return ((starts[:, None] + offsets[None, :]) % num_available).reshape(-1)
