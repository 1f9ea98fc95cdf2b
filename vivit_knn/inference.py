"""Single-video inference from a training run's workdir: top-k class names with probabilities."""

from __future__ import annotations

import json
from typing import List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vivit_knn import config as config_lib
from vivit_knn.data.views import average_view_logits
from vivit_knn.models.registry import build_model
from vivit_knn.train.checkpoint import item_path, resolve, restore_on_host

RUN_INFO = "run_info.json"


def write_run_info(workdir: str, class_names, input_shape) -> str:
  """Records what inference needs from the dataset (class names, clip shape) in the workdir."""
  path = resolve(workdir) / RUN_INFO
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"class_names": list(class_names),
                              "input_shape": list(input_shape)}, indent=2))
  return str(path)


def read_run_info(workdir: str) -> dict:
  """Reads `run_info.json`; a clear error if the workdir was not written by training."""
  path = resolve(workdir) / RUN_INFO
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a training run's directory")
  return json.loads(path.read_text())


def restore_params(workdir: str) -> Tuple[dict, int]:
  """Params of the newest checkpoint in `<workdir>/checkpoints`, as host arrays."""
  directory = resolve(workdir) / "checkpoints"
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"--workdir={workdir} holds no checkpoint (looked in {directory})")
  return restore_on_host(item_path(workdir, step))["params"], step


def predict_video(config: ml_collections.ConfigDict, workdir: str, video: str,
                  top_k: int = 5) -> List[Tuple[str, float]]:
  """Top-k (class name, probability) for one video file, averaging logits over the test views."""
  from vivit_knn.data.inference import load_video_views  # PyAV only needed here

  config_lib.check_keys(config)
  info = read_run_info(workdir)
  names = info["class_names"]
  config_lib.check_model(config.model, info["input_shape"])
  model = build_model(config.model, len(names))
  params, _ = restore_params(workdir)
  views = np.asarray(load_video_views(video, config.dataset), np.float32)  # [V, T, H, W, C]

  @jax.jit
  def probabilities(params, views):
    logits, _ = model.apply({"params": params}, views, train=False)
    return jax.nn.softmax(average_view_logits(logits.astype(jnp.float32)[None], views.shape[0])[0])

  probs = np.asarray(probabilities(params, views))
  order = np.argsort(-probs)[:min(top_k, len(names))]
  return [(names[i], float(probs[i])) for i in order]
