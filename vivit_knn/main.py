"""Command-line entry point.

  python -m vivit_knn.main --config=configs/synthetic_dk.py --workdir=runs/synthetic_dk
  python -m vivit_knn.main --config=configs/synthetic_dk.py --workdir=runs/synthetic_dk --mode=eval
  python -m vivit_knn.main --config=<config> --workdir=<run> --mode=infer --video=clip.avi

`--config.<field>=<value>` overrides any config value; unknown fields are errors.
Errors are one line on stderr; exit codes are listed in `vivit_knn.cli` (0 done,
2 bad input, 3 non-finite, 4 preempted with a checkpoint saved).
"""

from __future__ import annotations

import os

# Keep TensorFlow (used only for tf.data) quiet and off accelerators' memory.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

from vivit_knn import cli

MODES = ("train", "eval", "infer")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_MODE = flags.DEFINE_enum("mode", "train", MODES,
                          "train: train (resuming from --workdir) then evaluate; "
                          "eval: evaluate the latest checkpoint in --workdir (or, when it "
                          "has none, the weights config.init_from configures); "
                          "infer: print the top-5 classes for --video.")
_VIDEO = flags.DEFINE_string("video", None, "Video file for --mode=infer.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "--mode=eval: where reports go (default: --workdir). Lets a finished "
    "run in a read-only folder be evaluated.")
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
  from vivit_knn.train import distributed
  distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax
  from vivit_knn.train import evaluation, trainer  # heavy imports after flag parsing

  config, workdir = _CONFIG.value, _WORKDIR.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/synthetic_dk.py")
  if not workdir:
    raise app.UsageError("--workdir is required: the run's checkpoints and logs go there")
  if _MODE.value == "train":
    result = trainer.train(config, workdir)
    if result.get("preempted"):
      print(f"preempted at step {result['step']}: checkpoint saved, rerun to resume")
      return cli.EXIT_PREEMPTED
    if "eval" in result and jax.process_index() == 0:
      print(evaluation.format_result(result["eval"], result["class_names"]))
      for name, path in result["eval_paths"].items():
        print(f"{name}: {path}")
  elif _MODE.value == "infer":
    from vivit_knn.inference import predict_video
    if not _VIDEO.value:
      raise app.UsageError("--mode=infer needs --video=<file>")
    for rank, (name, prob) in enumerate(predict_video(config, workdir, _VIDEO.value), 1):
      print(f"{rank}. {name}  {prob:.4f}")
  else:
    result = trainer.evaluate_checkpoint(config, workdir, output_dir=_OUTPUT_DIR.value)
    if result["init"] is None:
      print(f"checkpoint step {result['step']}")
    print(evaluation.format_result(result["eval"], result["class_names"]))
    for name, path in result["eval_paths"].items():
      print(f"{name}: {path}")
  return 0


def run() -> None:
  """Console entry: errors are one-line messages with the exit codes of `vivit_knn.cli`."""
  logging.set_verbosity(logging.WARNING)
  cli.run(main)


if __name__ == "__main__":
  run()
