"""Name-based construction from ``config.dataset``: datasets, one video's views.

Adding a source means adding one entry to :data:`_SOURCES` (or calling
:func:`register_dataset`) with its default-config factory and its constructor.
:func:`load_video_views` makes the test views of a single video file exactly
as the eval pipeline of a real-video dataset config makes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ml_collections
import numpy as np
import tensorflow as tf

from vivit_knn.data import base
from vivit_knn.data import named
from vivit_knn.data import options
from vivit_knn.data import processors
from vivit_knn.data import skips
from vivit_knn.data import synthetic
from vivit_knn.data import tfds_source
from vivit_knn.data import tfrecord
from vivit_knn.data import video_io

DefaultConfigFn = Callable[[], ml_collections.ConfigDict]
Constructor = Callable[[ml_collections.ConfigDict], base.VideoDataset]

_SOURCES: dict[str, tuple[DefaultConfigFn, Constructor]] = {
    "synthetic": (synthetic.default_config, synthetic.SyntheticMotionDataset),
    "tfrecord": (tfrecord.default_config, tfrecord.build),
    "tfds": (tfds_source.default_config, tfds_source.build),
    "ucf101": (named.ucf101_config, named.build_ucf101),
    "hmdb51": (named.hmdb51_config, named.build_hmdb51),
}

# Name -> default config factory; used to validate ``dataset.*`` keys.
DATASET_DEFAULTS: dict[str, DefaultConfigFn] = {
    name: default_fn for name, (default_fn, _) in _SOURCES.items()
}


def register_dataset(name: str, default_config_fn: DefaultConfigFn,
                     constructor: Constructor) -> None:
  """Makes a dataset available to :func:`build_dataset` under ``name``.

  Raises:
    ValueError: if ``name`` is already registered.
  """
  if name in _SOURCES:
    raise ValueError(f"dataset {name!r} is already registered")
  _SOURCES[name] = (default_config_fn, constructor)
  DATASET_DEFAULTS[name] = default_config_fn


def known_datasets() -> tuple[str, ...]:
  """Names accepted by :func:`build_dataset`, sorted."""
  return tuple(sorted(_SOURCES))


def build_dataset(config: ml_collections.ConfigDict) -> base.VideoDataset:
  """Builds the dataset named by ``config.name`` from ``config``.

  Raises:
    ValueError: if ``config.name`` is missing or not registered (the
      message names ``dataset.name`` and lists the known names), or if the
      dataset rejects the config.
  """
  name = config.get("name")
  if name not in _SOURCES:
    raise ValueError(
        f"unknown dataset.name {name!r}; known names: "
        f"{', '.join(known_datasets())}")
  _, constructor = _SOURCES[name]
  return constructor(config)


def _process_spec(
    dataset_config: ml_collections.ConfigDict) -> options.ProcessSpec:
  """Processing settings of a real-video dataset config (defaults filled in)."""
  name = dataset_config.get("name")
  if name not in DATASET_DEFAULTS:
    raise ValueError(f"unknown dataset.name {name!r}")
  if name == "synthetic":
    return _synthetic_spec(dataset_config)
  defaults = DATASET_DEFAULTS[name]()
  if "min_resize" not in defaults:
    raise ValueError(
        f"dataset {name!r} is not a video-file dataset; inference needs the "
        "config of a real-video dataset (e.g. ucf101, hmdb51, tfrecord, "
        "synthetic)")
  return options.ProcessSpec.from_config(
      options.resolve_config(dataset_config, lambda: defaults))


def _synthetic_spec(
    dataset_config: ml_collections.ConfigDict) -> options.ProcessSpec:
  """How a real video becomes the input of a model trained on synthetic clips.

  One clip of ``num_frames`` consecutive frames from the middle of the
  video, short side resized to ``image_size`` and centre-cropped, scaled to
  [-1, 1] like the synthetic clips.
  """
  cfg = options.resolve_config(dataset_config, synthetic.default_config)
  fields = options.processing_fields()
  fields.update(num_frames=cfg.num_frames, frame_stride=1,
                image_size=cfg.image_size, min_resize=cfg.image_size,
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
    dataset_config: ``config.dataset`` of the run.

  Returns:
    float32 ``[V, T, H, W, C]`` with ``V = num_test_clips * num_test_crops``
    (``V = 1`` included).

  Raises:
    FileNotFoundError: naming ``path`` if it does not exist.
    ValueError: naming ``path`` if it is corrupt, truncated or has no
      frames, or if the config is not a real-video dataset's.
  """
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
