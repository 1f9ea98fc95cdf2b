"""Command-line entry point.

  python -m vivit_knn.main --config=configs/synthetic_dk.py --workdir=runs/synthetic_dk
  python -m vivit_knn.main --config=configs/synthetic_dk.py --workdir=runs/synthetic_dk --mode=eval
  python -m vivit_knn.main --config=<config> --workdir=<run> --mode=infer --video=clip.avi
  python -m vivit_knn.main --config=<config> --workdir=<run> --mode=infer --video=<folder>
  python -m vivit_knn.main ... --mode=infer --video=clip.avi --output_video=labelled.mp4

`--config.<field>=<value>` overrides any config value. Training stores its config
in `<workdir>/config.json`; eval, infer and a resumed training start from it, with
overrides of `vivit_knn.train.run_config.ALLOWED_OVERRIDES` only. Training holds a
lock on its workdir. Errors are one line on stderr (exit codes: `vivit_knn.cli`).
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from vivit_knn import cli, errors, stop_signals

MODES = ("train", "eval", "infer")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_MODE = flags.DEFINE_enum("mode", "train", MODES,
                          "train: train (resuming from --workdir) then evaluate; "
                          "eval: evaluate the latest checkpoint in --workdir (or, when it "
                          "has none, the weights config.init_from configures); "
                          "infer: print the top-5 classes for --video (a file), or write "
                          "a CSV of them for every video in --video (a folder).")
_VIDEO = flags.DEFINE_string("video", None, "Video file, or a folder of videos (writes a CSV "
                             "of top-5 predictions; with class subfolders, the accuracy too), "
                             "for --mode=infer.")
_OUTPUT_VIDEO = flags.DEFINE_string("output_video", None, "--mode=infer on a --video file: "
                                    "write the clip with its top-5 classes drawn on it here.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "--mode=eval: where reports go (default: --workdir). Lets a finished "
    "run in a read-only folder be evaluated.")
_STRICT = flags.DEFINE_bool(
    "strict", False, "Refuse checkpoints that carry no checksums (written by older versions) "
    "instead of restoring them unverified with a warning.")
_RESTART = flags.DEFINE_integer(
    "restart_from_step", None, "--mode=train: go on from this kept checkpoint step; newer "
    "steps are moved to <workdir>/checkpoints_superseded/ (e.g. after a non-finite stop).")
_USE_CONFIG_FILE = flags.DEFINE_bool(
    "use_config_file", False, "Use the --config file for a workdir that has checkpoints but no "
    "stored config.json (training stores it then).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for multi-process runs. Not needed on TPU pods or under SLURM, "
    "where JAX finds it.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with "
                                      "--coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with "
                                   "--coordinator_address).")


def main(argv) -> int:
  """Runs the selected mode."""
  del argv
  video = _VIDEO.value
  if _MODE.value == "infer":  # checked before the slow imports
    if not (video and os.path.exists(video)):
      raise errors.UserError(f"--video={video} does not exist" if video
                             else "--mode=infer needs --video=<file or folder>")
    if _OUTPUT_VIDEO.value and os.path.isdir(video):
      raise errors.UserError(f"--output_video needs a single --video file; {video} is a folder")
  from vivit_knn.train import distributed
  distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax
  # Heavy imports after flag parsing.
  from vivit_knn.train import checkpoint, evaluation, initialisation, run_config, trainer

  config, workdir = _CONFIG.value, _WORKDIR.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/synthetic_dk.py")
  if not workdir:
    raise app.UsageError("--workdir is required: the run's checkpoints and logs go there")
  if _MODE.value != "train" or checkpoint.has_checkpoints(workdir):
    # The run's stored config, with this command line's overrides on top; a fresh
    # training run stores its own config when it starts.
    config = run_config.resolve_run_config(config, workdir, training=_MODE.value == "train",
                                           use_config_file=_USE_CONFIG_FILE.value,
                                           notes_dir=_OUTPUT_DIR.value)
  else:
    initialisation.check_sources(config)  # before the workdir is written
  if _RESTART.value is not None and _MODE.value != "train":
    raise app.UsageError("--restart_from_step is for --mode=train")
  if _MODE.value == "infer":
    from vivit_knn import inference
    inference.run_infer(config, workdir, video, _OUTPUT_VIDEO.value)
    return 0
  if _MODE.value == "train":
    result = trainer.train(config, workdir, restart_from_step=_RESTART.value,
                           strict=_STRICT.value)
    if result.get("preempted"):
      print(f"preempted at step {result['step']}: checkpoint saved, rerun to resume")
      return cli.EXIT_PREEMPTED
    if "eval" not in result or jax.process_index() != 0:
      return 0
  else:
    result = trainer.evaluate_checkpoint(config, workdir, output_dir=_OUTPUT_DIR.value,
                                         strict=_STRICT.value)
    if result["init"] is None:
      print(f"checkpoint step {result['step']}"
            + (" (the best eval's)" if config.eval.checkpoint == "best" else ""))
  print(evaluation.format_result(result["eval"], result["class_names"]))
  for name, path in result["eval_paths"].items():
    print(f"{name}: {path}")
  return 0


def run() -> None:
  """Console entry: one-line errors, the exit codes of `vivit_knn.cli`; stop signals armed first."""
  stop_signals.install()
  cli.run(main)


if __name__ == "__main__":
  run()
