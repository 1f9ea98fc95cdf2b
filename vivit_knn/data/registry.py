"""Name-based construction of datasets from ``config.dataset``.

Adding a source means adding one entry to :data:`_SOURCES` (or calling
:func:`register_dataset`) with its default-config factory and its constructor.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from vivit_knn.data import base
from vivit_knn.data import named
from vivit_knn.data import synthetic
from vivit_knn.data import tfds_source
from vivit_knn.data import tfrecord

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
