"""Single-video inference from a training run's workdir: top-k class names with probabilities."""

from __future__ import annotations

from typing import List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit_knn import config as config_lib
from vivit_knn.data.processors import average_view_logits
from vivit_knn.models.registry import build_model
from vivit_knn.train.run_info import read_run_info, restore_params


def predict_video(config: ml_collections.ConfigDict, workdir: str, video: str,
                  top_k: int = 5) -> List[Tuple[str, float]]:
  """Top-k (class name, probability) for one video file, averaging logits over the test views.

  Args:
    config: the config the run in `workdir` was trained with.
    workdir: a training run's directory (its `run_info.json` and newest checkpoint).
    video: the video file.
    top_k: how many classes to return (at most the number of classes).

  Returns:
    `(class name, probability)` pairs, most probable first.
  """
  from vivit_knn.data.registry import load_video_views  # pylint: disable=g-import-not-at-top

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
