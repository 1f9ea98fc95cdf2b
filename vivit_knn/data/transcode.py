"""Per-video work of the converter: video file -> resized JPEG frames.

Imports no TensorFlow, so converter worker processes start quickly. Results
are plain tuples because exceptions with extra fields do not survive
pickling between processes.
"""

from __future__ import annotations

from vivit_knn.data import jpeg, skips, video_io


def video_to_jpegs(path: str, short_side: int,
                   quality: int) -> tuple[str, object, str]:
  """``('ok', [jpeg bytes per frame], '')`` or ``('skip', reason, detail)``.

  Frames are downscaled to ``short_side`` (never enlarged; 0 keeps them).
  """
  try:
    frames = video_io.read_video(path)
    return ("ok", [jpeg.encode_jpeg(jpeg.resize_short_side(f, short_side),
                                    quality) for f in frames], "")
  except skips.BadVideoError as err:
    return ("skip", err.reason, str(err))
  except Exception as err:  # Never let one odd file stop a conversion.
    return ("skip", skips.CORRUPT, f"{path}: {type(err).__name__}: {err}")


def transcode_job(job: tuple[str, int, int]) -> tuple[str, object, str]:
  """:func:`video_to_jpegs` on a ``(path, short_side, quality)`` tuple."""
  return video_to_jpegs(*job)
