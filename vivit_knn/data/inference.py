"""Test views of a single video file, exactly as the eval pipeline makes them."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import tensorflow as tf

from vivit_knn.data import options, processors, sampling, skips, video_io


def _spec(dataset_config: ml_collections.ConfigDict) -> options.ProcessSpec:
  """Processing settings of a real-video dataset config (defaults filled in)."""
  from vivit_knn.data.registry import DATASET_DEFAULTS  # pylint: disable=g-import-not-at-top
  name = dataset_config.get("name")
  if name not in DATASET_DEFAULTS:
    raise ValueError(f"unknown dataset.name {name!r}")
  defaults = DATASET_DEFAULTS[name]()
  if "min_resize" not in defaults:
    raise ValueError(
        f"dataset {name!r} is not a video-file dataset; inference needs the "
        "config of a real-video dataset (e.g. ucf101, hmdb51, tfrecord)")
  return options.ProcessSpec.from_config(
      options.resolve_config(dataset_config, lambda: defaults))


def load_video_views(path: str,
                     dataset_config: ml_collections.ConfigDict) -> np.ndarray:
  """The eval views of the video at ``path``.

  Uses the dataset config's test sampling (``num_test_clips`` clips spread
  over the video, ``num_test_crops`` crops, ``frame_stride``) and the same
  processors as :meth:`eval_batches`.

  Args:
    path: Video file readable by FFmpeg.
    dataset_config: ``config.dataset`` of the run.

  Returns:
    float32 ``[V, T, H, W, C]`` with ``V = num_test_clips * num_test_crops``
    (``V = 1`` included).

  Raises:
    FileNotFoundError: naming ``path`` if it does not exist.
    ValueError: naming ``path`` if it is corrupt, truncated or has no
      frames, or if the config is not a real-video dataset's.
  """
  spec = _spec(dataset_config)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"video file {path} does not exist")

  def select(n):
    return sampling.test_indices(n, spec.num_frames, spec.frame_stride,
                                 spec.num_test_clips)

  try:
    frames = video_io.read_video(path, select)
  except skips.BadVideoError as err:
    if err.reason == skips.MISSING:
      raise FileNotFoundError(f"video file {path} does not exist") from err
    raise ValueError(f"cannot read video {path}: "
                     f"{err.reason.replace('_', ' ')}"
                     f"{' (' + err.detail + ')' if err.detail else ''}"
                     ) from err
  views = processors.test_views(tf.constant(frames), spec)
  return views.numpy().astype(np.float32)
