"""The `--config` / `--workdir` pair of the tools that read a trained run."""

from __future__ import annotations

from typing import Optional

import ml_collections


def trained_run_config(config: Optional[ml_collections.ConfigDict],
                       workdir: Optional[str]) -> ml_collections.ConfigDict:
  """The config stored in `workdir`, with this command line's `--config.*` overrides on top."""
  if config is None:
    raise ValueError("--config is required, e.g. --config=configs/synthetic_dk.py")
  if not workdir:
    raise ValueError("--workdir is required: a training run's directory")
  from vivit_knn.train.run_config import resolve_run_config  # pylint: disable=g-import-not-at-top
  return resolve_run_config(config, workdir)
