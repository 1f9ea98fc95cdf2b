"""Name-based construction from ``config.dataset``: datasets, one video's views.

:data:`DATASET_DEFAULTS` maps each ``dataset.name`` to its default config (its
schema, from :mod:`~vivit_knn.data.options`); it loads without TensorFlow, so a
config can be built and checked without it. The sources themselves, which
need TensorFlow, are imported when a dataset is built. Adding a source means
adding its defaults to ``options`` and one entry here and in :func:`_constructor`.
:func:`load_video_views` makes the test views of a single video file exactly as
the eval pipeline of a real-video dataset config makes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from vivit_knn.data import options

if TYPE_CHECKING:  # the dataset interface is TensorFlow's; only its name is needed here
  from vivit_knn.data import base

DefaultConfigFn = Callable[[], ml_collections.ConfigDict]
Constructor = Callable[[ml_collections.ConfigDict], "base.VideoDataset"]

# Name -> default config factory: the schema of ``config.dataset`` for that name.
DATASET_DEFAULTS: dict[str, DefaultConfigFn] = {
    "synthetic": options.synthetic_config,
    "tfrecord": options.tfrecord_config,
    "tfds": options.tfds_config,
    "ucf101": options.ucf101_config,
    "hmdb51": options.hmdb51_config,
}


def known_datasets() -> tuple[str, ...]:
  """Names accepted by :func:`build_dataset`, sorted."""
  return tuple(sorted(DATASET_DEFAULTS))


def clip_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  """``(T, H, W, C)`` of one clip of the dataset ``config`` describes, without building it."""
  return (config.num_frames, config.image_size, config.image_size, 3)


def _constructor(name: str) -> Constructor:
  """The constructor of dataset ``name``, imported on first use (the sources load TF)."""
  # pylint: disable=g-import-not-at-top
  if name == "synthetic":
    from vivit_knn.data import synthetic
    return synthetic.SyntheticMotionDataset
  from vivit_knn.data import named, tfds_source, tfrecord
  return {"tfrecord": tfrecord.build, "tfds": tfds_source.build,
          "ucf101": named.build_ucf101, "hmdb51": named.build_hmdb51}[name]


def build_dataset(config: ml_collections.ConfigDict) -> base.VideoDataset:
  """Builds the dataset named by ``config.name`` from ``config``.

  ``config`` is a checked ``config.dataset`` (see ``vivit_knn.config.validate``):
  every key of its schema, and none other.

  Raises:
    ValueError: if ``config.name`` is missing or not known (the message names
      ``dataset.name`` and lists the known names), or if the dataset rejects
      the config.
  """
  name = config.get("name")
  if name not in DATASET_DEFAULTS:
    raise ValueError(
        f"unknown dataset.name {name!r}; known names: "
        f"{', '.join(known_datasets())}")
  return _constructor(name)(config)


def _process_spec(
    dataset_config: ml_collections.ConfigDict) -> options.ProcessSpec:
  """Processing settings of a checked dataset config."""
  if dataset_config.name == "synthetic":
    return _synthetic_spec(dataset_config)
  return options.ProcessSpec.from_config(dataset_config)


def _synthetic_spec(
    dataset_config: ml_collections.ConfigDict) -> options.ProcessSpec:
  """How a real video becomes the input of a model trained on synthetic clips.

  One clip of ``num_frames`` consecutive frames from the middle of the
  video, short side resized to ``image_size`` and centre-cropped, scaled to
  [-1, 1] like the synthetic clips.
  """
  fields = options.processing_fields()
  fields.update(num_frames=dataset_config.num_frames, frame_stride=1,
                image_size=dataset_config.image_size,
                min_resize=dataset_config.image_size,
                normalization="zero_centered", num_test_clips=1,
                num_test_crops=1)
  return options.ProcessSpec.from_config(ml_collections.ConfigDict(fields))


def load_video_views(path: str,
                     dataset_config: ml_collections.ConfigDict) -> np.ndarray:
  """The eval views of the video at ``path``.

  Uses the dataset config's test sampling (``num_test_clips`` clips over the
  video as ``frame_sampling`` and ``frame_stride`` say, ``num_test_crops``
  crops) and the same processors as the dataset's
  :meth:`~base.VideoDataset.eval_batches`. For a ``synthetic`` config, the
  video gives one centre clip of consecutive frames resized to the synthetic
  clips' size and value range.

  Args:
    path: Video file readable by FFmpeg.
    dataset_config: ``config.dataset`` of the run (checked).

  Returns:
    float32 ``[V, T, H, W, C]`` with ``V = num_test_clips * num_test_crops``
    (``V = 1`` included).

  Raises:
    FileNotFoundError: naming ``path`` if it does not exist.
    ValueError: naming ``path`` if it is corrupt, truncated or has no
      frames.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf

  from vivit_knn.data import processors, skips, video_io

  spec = _process_spec(dataset_config)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"video file {path} does not exist")

  def select(n):
    return processors.view_indices(spec, n)

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
