"""Reading video files with PyAV, decoding only the frames asked for.

Anything that cannot give frames raises :class:`~vivit_knn.data.skips.BadVideoError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import av
import numpy as np

from vivit_knn.data import skips

# Indices of the frames to return, given the number of frames in the video.
FrameSelector = Callable[[int], np.ndarray]

# A stream is called truncated when it holds fewer packets than its header declares by more than
# this fraction (or 2 frames): small mismatches are common in healthy AVI files.
_TRUNCATION_TOLERANCE = 0.05
# Presentation times are rationals; a segment bound given in decimal seconds
# (e.g. 00:00:03.37) is compared with this slack.
_TIME_EPS_S = 1e-6


def _open(path: str):
  """``(container, codec context, packets, declared frame count)``."""
  container = av.open(path)
  try:
    if not container.streams.video:
      raise skips.BadVideoError(skips.ZERO_FRAMES, path, "no video stream")
    stream = container.streams.video[0]
    # tf.data already runs one decode per core; codec threads would only oversubscribe them.
    stream.codec_context.thread_count = 1
    packets = [p for p in container.demux(stream) if p.size]
    return container, stream.codec_context, packets, stream.frames
  except BaseException:
    container.close()
    raise


def _decode(codec, packets, wanted: set[int], last: int) -> dict[int, np.ndarray]:
  """RGB arrays of the frames in ``wanted``; stops after frame ``last``."""
  out: dict[int, np.ndarray] = {}
  index = 0

  def take(frames):
    nonlocal index
    for frame in frames:
      if index in wanted:
        out[index] = frame.to_ndarray(format="rgb24")
      index += 1

  for packet in packets:
    take(codec.decode(packet))
    if index > last:
      return out
  take(codec.decode(None))
  return out


def read_video(path: str, select: FrameSelector | None = None) -> np.ndarray:
  """uint8 ``[k, H, W, 3]`` RGB frames of the local video file ``path`` (any FFmpeg format).

  ``select`` maps the number of frames ``n`` to the ``k`` indices to return (in
  ``[0, n)``, any order, repeats allowed); default: all frames. BadVideoError for a
  ``missing`` file, ``corrupt`` data, a ``truncated`` stream or ``zero_frames``.
  """
  select = select or np.arange
  if not os.path.exists(path):
    raise skips.BadVideoError(skips.MISSING, path, "no such file")
  try:
    container, codec, packets, declared = _open(path)
    with container:
      if not packets:
        raise skips.BadVideoError(skips.ZERO_FRAMES, path)
      shortfall = declared - len(packets)
      if declared > 0 and shortfall > max(2, _TRUNCATION_TOLERANCE * declared):
        raise skips.BadVideoError(
            skips.TRUNCATED, path,
            f"{len(packets)} of {declared} declared frames present")
      indices = np.asarray(select(len(packets)), np.int64)
      wanted = set(indices.tolist())
      frames = _decode(codec, packets, wanted, max(wanted))
    if len(frames) < len(wanted):
      # Fewer decodable frames than packets: sample again from what decodes.
      container, codec, packets, _ = _open(path)
      with container:
        every = _decode(codec, packets, set(range(len(packets))), len(packets))
      if not every:
        raise skips.BadVideoError(skips.CORRUPT, path, "no frame decodes")
      frames = dict(enumerate(every[i] for i in sorted(every)))
      indices = np.asarray(select(len(frames)), np.int64)
    return np.stack([frames[i] for i in indices.tolist()])
  except skips.BadVideoError:
    raise
  except (av.FFmpegError, OSError, ValueError, MemoryError) as err:
    raise skips.BadVideoError(skips.CORRUPT, path, f"{type(err).__name__}: {err}") from err


def iter_segment(path: str, start_s: float, end_s: float,
                 opener: Callable[[str], object] | None = None):
  """Yields the uint8 ``[H, W, 3]`` RGB frames of ``path`` shown from ``start_s`` to ``end_s``.

  Seeks to the key frame before ``start_s`` and decodes up to ``end_s`` only. A
  frame's time counts from the stream's first frame. ``opener`` returns a binary
  file object for ``path`` (remote storage); default: FFmpeg opens the path. BadVideoError
  for a ``missing`` file, ``corrupt`` data, or ``zero_frames`` in the segment.
  """
  if opener is None and not os.path.exists(path):
    raise skips.BadVideoError(skips.MISSING, path, "no such file")
  count, last_time = 0, None
  try:
    with av.open(opener(path) if opener else path) as container:
      if not container.streams.video:
        raise skips.BadVideoError(skips.ZERO_FRAMES, path, "no video stream")
      stream = container.streams.video[0]
      stream.codec_context.thread_count = 1
      base = stream.time_base
      first_pts = stream.start_time or 0
      container.seek(first_pts + int(start_s / base), stream=stream, backward=True)
      for frame in container.decode(stream):
        if frame.pts is None:
          continue
        time = float((frame.pts - first_pts) * base)
        last_time = time
        if time > end_s + _TIME_EPS_S:
          break
        if time >= start_s - _TIME_EPS_S:
          count += 1
          yield frame.to_ndarray(format="rgb24")
  except (av.FFmpegError, OSError, ValueError, MemoryError) as err:
    raise skips.BadVideoError(skips.CORRUPT, path, f"{type(err).__name__}: {err}") from err
  if not count:
    ends = (f"its last frame is at {last_time:.2f} s" if last_time is not None
            else "no frame decodes")
    raise skips.BadVideoError(skips.ZERO_FRAMES, path,
                              f"no frame between {start_s:.2f} s and {end_s:.2f} s ({ends})")

