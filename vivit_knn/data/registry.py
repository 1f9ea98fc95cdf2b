"""Name-based construction from ``config.dataset``: datasets, one video's views.

:data:`DATASET_DEFAULTS` maps each ``dataset.name`` to its schema (from
:mod:`.options`, without TensorFlow); the sources, which need TensorFlow, are
imported when a dataset is built.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from vivit_knn.data import options

if TYPE_CHECKING:  # the dataset interface is TensorFlow's; only its name is needed here
  from vivit_knn.data import base

# Name -> default config factory: the schema of ``config.dataset`` for that name.
DATASET_DEFAULTS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "synthetic": options.synthetic_config,
    "tfrecord": options.tfrecord_config,
    "tfds": options.tfds_config,
    "ucf101": functools.partial(options.named_config, "ucf101"),
    "hmdb51": functools.partial(options.named_config, "hmdb51"),
}


def clip_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  """``(T, H, W, C)`` of one clip of the dataset ``config`` describes, without building it."""
  return (config.num_frames, config.image_size, config.image_size, 3)


def _constructor(name: str) -> Callable[[ml_collections.ConfigDict], base.VideoDataset]:
  """The constructor of dataset ``name``, imported on first use (the sources load TF)."""
  # pylint: disable=g-import-not-at-top
  if name == "synthetic":
    from vivit_knn.data import synthetic
    return synthetic.SyntheticMotionDataset
  from vivit_knn.data import named, tfds_source, tfrecord
  return {"tfrecord": tfrecord.build, "tfds": tfds_source.build,
          "ucf101": functools.partial(named.build, named.UCF101),
          "hmdb51": functools.partial(named.build, named.HMDB51)}[name]


def build_dataset(config: ml_collections.ConfigDict) -> base.VideoDataset:
  """Builds the dataset named by ``config.name`` from a checked ``config.dataset``."""
  name = config.get("name")
  if name not in DATASET_DEFAULTS:
    raise ValueError(f"unknown dataset.name {name!r}; known names: "
                     f"{', '.join(sorted(DATASET_DEFAULTS))}")
  return _constructor(name)(config)


def _process_spec(dataset_config: ml_collections.ConfigDict) -> options.ProcessSpec:
  """Processing settings of a checked dataset config.

  For ``synthetic``: one clip of consecutive frames from the middle of the
  video, short side resized to ``image_size``, centre-cropped, in [-1, 1].
  """
  if dataset_config.name != "synthetic":
    return options.ProcessSpec.from_config(dataset_config)
  fields = options.processing_fields()
  fields.update(num_frames=dataset_config.num_frames, frame_stride=1,
                image_size=dataset_config.image_size, min_resize=dataset_config.image_size,
                normalization="zero_centered", num_test_clips=1, num_test_crops=1)
  return options.ProcessSpec.from_config(ml_collections.ConfigDict(fields))


def load_video_views(path: str, dataset_config: ml_collections.ConfigDict) -> np.ndarray:
  """float32 ``[V, T, H, W, C]`` eval views of the video file ``path``, as the run makes them.

  Raises FileNotFoundError or (for a corrupt, truncated or empty video) ValueError naming ``path``.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf

  from vivit_knn.data import processors, skips, video_io

  spec = _process_spec(dataset_config)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"video file {path} does not exist")
  try:
    frames = video_io.read_video(path, lambda n: processors.view_indices(spec, n))
  except skips.BadVideoError as err:
    if err.reason == skips.MISSING:
      raise FileNotFoundError(f"video file {path} does not exist") from err
    detail = f" ({err.detail})" if err.detail else ""
    raise ValueError(f"cannot read video {path}: {err.reason.replace('_', ' ')}{detail}") from err
  views = processors.test_views(tf.constant(frames), spec)
  return views.numpy().astype(np.float32)
