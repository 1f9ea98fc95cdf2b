"""Inference from a training run's workdir: one video's top-5, or a CSV for a folder of videos.

A video file's top-5 can also be drawn on the clip (`--output_video`); a folder whose
subfolders are the run's class names gets a true-class column and the accuracy.

A video gets exactly the test views evaluation gives it
(`vivit_knn.data.registry.load_video_views`); a run trained on the synthetic task
takes one centre clip of any real video, resized to its input size.
"""

from __future__ import annotations

import csv
import os
import sys
from typing import List, Optional, Sequence, Tuple

import av
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont

from vivit_knn import config as config_lib
from vivit_knn.data.processors import average_view_logits
from vivit_knn.data.registry import load_video_views
from vivit_knn.data.splits import VIDEO_EXTENSIONS
from vivit_knn.data.video_io import read_video
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
                   progress: bool) -> Tuple[List[Tuple[str, List[str]]], List[str]]:
  """Writes the top-5 of each of `videos` (relative to `folder`) to `out_csv` (`repr` floats).

  When some video's folder is a class name, a `true_class` column follows `file`. Returns
  `([(true class or '', top-5 names)] per row written, lines 'file: why')`; a file that
  cannot be decoded is skipped.
  """
  k = min(TOP_K, len(predictor.class_names))
  folders = {rel: os.path.basename(os.path.dirname(rel)) for rel in videos}
  truths = {rel: f if f in predictor.class_names else "" for rel, f in folders.items()}
  labelled, skipped, rows = ["true_class"] * any(truths.values()), [], []
  epath.Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
  bar = TenthsCounter(len(videos), "infer", "videos", enabled=progress)
  with epath.Path(out_csv).open("w") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["file"] + labelled + [f"top{i}_{c}" for i in range(1, k + 1)
                                           for c in ("class", "prob")])
    for rel in videos:
      try:
        top = predictor.top_k(predictor.probabilities(os.path.join(folder, rel)), k)
      except (ValueError, FileNotFoundError) as err:
        skipped.append(f"{rel}: {err}")
      else:
        writer.writerow([rel] + [truths[rel]] * len(labelled)
                        + [v for c, p in top for v in (c, repr(p))])
        rows.append((truths[rel], [c for c, _ in top]))
      bar.add(1)
  return rows, skipped


def write_labelled_video(video: str, out: str, top: Sequence[Tuple[str, float]]) -> None:
  """Writes `video` to `out` with the classes `top` drawn on every frame (H.264 in .mp4).

  Frames are scaled up by a whole factor to at least 256 pixels, so that the text is legible.
  """
  with av.open(video) as container:
    rate = container.streams.video[0].average_rate or 25
  frames = read_video(video)
  scale = -(-256 // min(frames.shape[1:3]))
  size = (frames.shape[2] * scale // 2 * 2, frames.shape[1] * scale // 2 * 2)  # even for 4:2:0
  font = ImageFont.load_default(size=max(12, size[1] // 16))
  text = "\n".join(f"{name} {prob:.3f}" for name, prob in top)
  with av.open(out, "w") as container:
    stream = container.add_stream("libx264" if out.lower().endswith(".mp4") else "mpeg4", rate)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    for frame in frames:
      image = Image.fromarray(frame).resize(size, Image.NEAREST)
      ImageDraw.Draw(image).multiline_text((6, 6), text, fill="white", font=font,
                                           stroke_width=2, stroke_fill="black")
      container.mux(stream.encode(av.VideoFrame.from_image(image)))
    container.mux(stream.encode())


def run_infer(config: ml_collections.ConfigDict, workdir: str, video: str,
              output_video: Optional[str] = None) -> None:
  """`--mode=infer`: prints a video file's top-5, or writes a CSV for a folder of videos.

  A header names the video or folder and the checkpoint step. For a folder:
  `<workdir>/predictions/<folder name>_step_<N>.csv` (one row per readable video; progress on
  a terminal at every tenth), the unreadable files with the reason in `<csv stem>_skipped.txt`, a
  summary line, and for videos in folders named after the run's classes, the accuracy.
  `output_video`: the file's clip with its top-5 drawn on it (`write_labelled_video`).
  """
  videos, others = list_videos(video) if os.path.isdir(video) else ([], [])
  if os.path.isdir(video) and not videos:
    raise ValueError(f"--video={video} holds no video file (extensions: "
                     f"{', '.join(VIDEO_EXTENSIONS)})")
  predictor = Predictor(config, workdir)
  print(f"video: {video} ({f'folder of {len(videos)} videos' if videos else 'file'})\n"
        f"checkpoint: step {predictor.step} of {workdir}", flush=True)
  if not videos:
    top = predictor.top_k(predictor.probabilities(video))
    for rank, (name, prob) in enumerate(top, 1):
      print(f"{rank}. {name}  {prob:.4f}")
    if output_video:
      write_labelled_video(video, output_video, top)
      print(f"labelled video: {output_video}")
    return
  name = os.path.basename(os.path.normpath(os.path.abspath(video))) or "videos"
  out_csv = str(resolve(workdir) / "predictions" / f"{name}_step_{predictor.step}.csv")
  rows, skipped = predict_folder(predictor, video, videos, out_csv,
                                 progress=sys.stdout.isatty())
  line = f"predicted {len(rows)} of {len(rows) + len(skipped)} videos in {video}"
  if skipped:
    skipped_path = os.path.splitext(out_csv)[0] + "_skipped.txt"
    epath.Path(skipped_path).write_text("\n".join(skipped) + "\n")
    line += f" ({len(skipped)} unreadable, skipped, see {skipped_path})"
  print(line + f"; {len(others)} other files ignored (not a video extension)" * bool(others))
  print("".join(f"skipped {entry}\n" for entry in skipped), end="")
  known = [(truth, names) for truth, names in rows if truth]
  if known:
    print(f"accuracy over the {len(known)} videos in class folders: top-1 "
          f"{np.mean([t == n[0] for t, n in known]):.4f}, top-{len(known[0][1])} "
          f"{np.mean([t in n for t, n in known]):.4f}")
  print(f"predictions: {out_csv}")
