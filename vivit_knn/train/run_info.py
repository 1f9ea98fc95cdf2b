"""What a run leaves for inference and a stage-2 teacher: `run_info.json`, its newest params."""

from __future__ import annotations

import json
from typing import Sequence, Tuple

from vivit_knn.train.checkpoint import Checkpointer, has_checkpoints, resolve, write_file

RUN_INFO = "run_info.json"


def write_run_info(workdir: str, class_names: Sequence[str], input_shape: Sequence[int]) -> str:
  """Writes the class names (in label order) and clip shape `[T, H, W, C]`; returns the path."""
  return write_file(workdir, RUN_INFO, json.dumps({"class_names": list(class_names),
                                                   "input_shape": list(input_shape)}, indent=2))


def read_run_info(workdir: str) -> dict:
  """`{'class_names': [...], 'input_shape': [...]}` of a training run (else FileNotFoundError)."""
  path = resolve(workdir) / RUN_INFO
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a training run's directory")
  return json.loads(path.read_text())


def restore_params(workdir: str) -> Tuple[dict, int]:
  """`(params, step)` of the newest readable checkpoint, verified, as host arrays."""
  if not has_checkpoints(workdir):
    raise FileNotFoundError(f"--workdir={workdir} holds no checkpoint (looked in "
                            f"{resolve(workdir) / 'checkpoints'})")
  ckpt = Checkpointer(workdir, read_only=True)
  state = ckpt.restore(None)
  return state["params"], ckpt.restored_step
