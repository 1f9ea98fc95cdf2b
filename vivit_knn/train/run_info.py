"""What a training run leaves for later use: `run_info.json` and its newest parameters.

Training writes the dataset facts inference needs (class names, clip shape) next
to its checkpoints; inference and the stage-2 distillation teacher read them
back, with the parameters of the newest checkpoint.
"""

from __future__ import annotations

import json
from typing import Sequence, Tuple

from vivit_knn.train.checkpoint import Checkpointer, has_checkpoints, resolve

RUN_INFO = "run_info.json"


def write_run_info(workdir: str, class_names: Sequence[str], input_shape: Sequence[int]) -> str:
  """Records what inference needs from the dataset in `<workdir>/run_info.json`.

  Args:
    workdir: the run's directory (local or remote).
    class_names: the dataset's class names, in label order.
    input_shape: one clip's shape `[T, H, W, C]`.

  Returns:
    The path written.
  """
  path = resolve(workdir) / RUN_INFO
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"class_names": list(class_names),
                              "input_shape": list(input_shape)}, indent=2))
  return str(path)


def read_run_info(workdir: str) -> dict:
  """Reads `<workdir>/run_info.json`.

  Args:
    workdir: a training run's directory.

  Returns:
    `{'class_names': [...], 'input_shape': [...]}`.

  Raises:
    FileNotFoundError: the workdir was not written by training.
  """
  path = resolve(workdir) / RUN_INFO
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a training run's directory")
  return json.loads(path.read_text())


def restore_params(workdir: str) -> Tuple[dict, int]:
  """The params of the newest readable checkpoint in `<workdir>/checkpoints`, as host arrays.

  The one verified restore path of training and eval (`Checkpointer.restore`):
  checksums are checked, and a damaged newest step falls back to an older one
  with a one-line warning.

  Args:
    workdir: a training run's directory.

  Returns:
    `(params, step)`.

  Raises:
    FileNotFoundError: the workdir holds no checkpoint.
  """
  if not has_checkpoints(workdir):
    raise FileNotFoundError(f"--workdir={workdir} holds no checkpoint (looked in "
                            f"{resolve(workdir) / 'checkpoints'})")
  ckpt = Checkpointer(workdir, read_only=True)
  state = ckpt.restore(None)
  return state["params"], ckpt.restored_step
