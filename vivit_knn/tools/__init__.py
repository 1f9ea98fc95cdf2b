"""Command-line tools on models and trained runs: stats, attention, k sweep, export."""


def trained_run_config(config, workdir: str):
  """The config stored in `workdir`, with this command line's `--config.*` overrides on top."""
  if config is None:
    raise ValueError("--config is required, e.g. --config=configs/synthetic_dk.py")
  if not workdir:
    raise ValueError("--workdir is required: a training run's directory")
  from vivit_knn.train.run_config import resolve_run_config  # pylint: disable=g-import-not-at-top
  return resolve_run_config(config, workdir)
