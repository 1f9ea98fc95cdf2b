"""Inference from a training run's workdir: one video's top-5, or a CSV for a folder of videos.

A video gets exactly the test views evaluation gives it
(`vivit_knn.data.registry.load_video_views`); a run trained on the synthetic task
takes one centre clip of any real video, resized to its input size.
"""

from __future__ import annotations

import csv
import os
import sys
from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from vivit_knn import config as config_lib
from vivit_knn.data.processors import average_view_logits
from vivit_knn.data.registry import load_video_views
from vivit_knn.data.splits import VIDEO_EXTENSIONS
from vivit_knn.models.registry import build_model
from vivit_knn.train.checkpoint import resolve
from vivit_knn.train.run_info import read_run_info, restore_params
from vivit_knn.train.summary import TenthsCounter

TOP_K = 5


class Predictor:
  """Class probabilities of single videos from the newest checkpoint of the run in `workdir`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_lib.check_keys(config)
    info = read_run_info(workdir)
    self.class_names: List[str] = list(info["class_names"])
    config_lib.check_model(config.model, info["input_shape"])
    self._dataset_config = config.dataset
    model = build_model(config.model, len(self.class_names))
    self.params, self.step = restore_params(workdir)

    @jax.jit
    def probabilities(params, views):
      logits, _ = model.apply({"params": params}, views, train=False)
      logits = average_view_logits(logits.astype(jnp.float32)[None], views.shape[0])[0]
      return jax.nn.softmax(logits)

    self._probabilities = probabilities

  def probabilities(self, video: str) -> np.ndarray:
    """float32 `[C]` softmax of the view-averaged logits of the video file `video`."""
    views = np.asarray(load_video_views(video, self._dataset_config), np.float32)
    return np.asarray(self._probabilities(self.params, views))

  def top_k(self, probs: np.ndarray, k: int = TOP_K) -> List[Tuple[str, float]]:
    """`(class name, probability)` of the `k` most probable classes, most probable first."""
    order = np.argsort(-probs, kind="stable")[:min(k, len(self.class_names))]
    return [(self.class_names[i], float(probs[i])) for i in order]


def list_videos(folder: str) -> Tuple[List[str], List[str]]:
  """`(videos, others)`: the non-hidden files under `folder` (relative, sorted) by extension."""
  videos, others = [], []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(files):
      if name.startswith("."):
        continue
      rel = os.path.relpath(os.path.join(root, name), folder)
      (videos if name.lower().endswith(VIDEO_EXTENSIONS) else others).append(rel)
  return sorted(videos), sorted(others)


def predict_folder(predictor: Predictor, folder: str, videos: Sequence[str], out_csv: str,
                   progress: bool) -> Tuple[int, List[str]]:
  """Writes the top-5 of each of `videos` (relative to `folder`) to `out_csv` (`repr` floats).

  Returns `(rows written, lines 'file: why')`; a file that cannot be decoded is skipped.
  """
  k = min(TOP_K, len(predictor.class_names))
  skipped, rows = [], 0
  epath.Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
  bar = TenthsCounter(len(videos), "infer", "videos", enabled=progress)
  with epath.Path(out_csv).open("w") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["file"] + [f"top{i}_{c}" for i in range(1, k + 1) for c in ("class", "prob")])
    for rel in videos:
      try:
        probs = predictor.probabilities(os.path.join(folder, rel))
      except (ValueError, FileNotFoundError) as err:
        skipped.append(f"{rel}: {err}")
      else:
        writer.writerow([rel] + [v for c, p in predictor.top_k(probs, k) for v in (c, repr(p))])
        rows += 1
      bar.add(1)
  return rows, skipped


def run_infer(config: ml_collections.ConfigDict, workdir: str, video: str) -> None:
  """`--mode=infer`: prints a video file's top-5, or writes a CSV for a folder of videos.

  For a folder: `<workdir>/predictions/<folder name>_step_<N>.csv` (one row per
  readable video; a progress bar on a terminal), the unreadable files with the
  reason in `<csv stem>_skipped.txt`, and a summary line.
  """
  if not os.path.exists(video):
    raise FileNotFoundError(f"--video={video} does not exist")
  if not os.path.isdir(video):
    predictor = Predictor(config, workdir)
    probabilities = predictor.probabilities(video)
    print(f"{video}: top-5 classes by checkpoint step {predictor.step} of {workdir}")
    for rank, (name, prob) in enumerate(predictor.top_k(probabilities), 1):
      print(f"{rank}. {name}  {prob:.4f}")
    return
  videos, others = list_videos(video)
  if not videos:
    raise ValueError(f"--video={video} holds no video file (extensions: "
                     f"{', '.join(VIDEO_EXTENSIONS)})")
  predictor = Predictor(config, workdir)
  name = os.path.basename(os.path.normpath(os.path.abspath(video))) or "videos"
  out_csv = str(resolve(workdir) / "predictions" / f"{name}_step_{predictor.step}.csv")
  rows, skipped = predict_folder(predictor, video, videos, out_csv,
                                 progress=sys.stderr.isatty())
  line = f"predicted {rows} of {rows + len(skipped)} videos in {video}"
  if skipped:
    skipped_path = os.path.splitext(out_csv)[0] + "_skipped.txt"
    epath.Path(skipped_path).write_text("\n".join(skipped) + "\n")
    line += f" ({len(skipped)} unreadable, skipped, see {skipped_path})"
  if others:
    line += f"; {len(others)} other files ignored (not a video extension)"
  print(line)
  for entry in skipped:
    print(f"skipped {entry}")
  print(f"predictions: {out_csv}")
