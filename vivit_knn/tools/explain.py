r"""Shows which keys a query keeps (k-NN) and how it weighs them, layer by layer.

    python -m vivit_knn.tools.explain --config=configs/synthetic_dk.py \
        --workdir=runs/synthetic_dk --index=3
    python -m vivit_knn.tools.explain --config=configs/ucf101_dk.py --workdir=runs/ucf \
        --video=clip.avi --layers=0,1 --heads=0,2 --query=cls --query=1,3,4

Reads the video as `--mode=infer` does (its first view), or synthetic eval clip
`--index` (true class known), with the run's stored config and newest checkpoint. Per
`--query` (`cls`, or `t,y,x`: tubelet time, patch row, patch column) it writes
`<input>_<query>.png` (frames across, layers down; colour: the query's weight, mean over
`--heads`; cyan box: a kept key, opacity the share of heads keeping it; rollout rows),
`.gif` (the same over every frame) and `.json` to `<workdir>/explain/`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np
from absl import flags
from ml_collections import ConfigDict, config_flags

from vivit_knn import cli
from vivit_knn.data.registry import build_dataset, load_video_views
from vivit_knn.tools import trained_run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.")
_VIDEO = flags.DEFINE_string("video", None, "Video file to explain.")
_INDEX = flags.DEFINE_integer("index", None, "Synthetic runs: eval clip index (not --video).")
_LAYERS = flags.DEFINE_list("layers", [], "Attention layers: names or indices (default: all).")
_HEADS = flags.DEFINE_list("heads", [], "Heads to average (default: all).")
flags.register_validator("heads", lambda v: all(h.strip().isdigit() for h in v),
                         "--heads takes head indices, e.g. --heads=0,2")
_QUERY = flags.DEFINE_multi_string("query", ["cls"], "'cls' or 't,y,x' (token grid); repeatable.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Output folder (default: <workdir>/explain).")


def load_clip(config: ConfigDict, video: str, index: int):
  """`(clip [T, H, W, C], name, true class or None)` of `video` or synthetic eval clip `index`."""
  if (video is None) == (index is None):
    raise ValueError("give exactly one of --video=<file> and --index=<n> (synthetic runs)")
  if video is not None:
    views = np.asarray(load_video_views(video, config.dataset), np.float32)
    return views[0], os.path.splitext(os.path.basename(video))[0], None
  if config.dataset.name != "synthetic":
    raise ValueError(f"--index works for synthetic-task runs only (this run's dataset is "
                     f"{config.dataset.name!r}); pass --video=<file>")
  dataset = build_dataset(config.dataset)
  n = dataset.info.num_eval_examples
  if not 0 <= index < n:
    raise ValueError(f"--index={index} is outside the synthetic eval set [0, {n})")
  clips, labels = dataset.generate("eval", [index])
  return clips[0], f"eval{index}", dataset.info.class_names[int(labels[0])]


def explain(config: ConfigDict, workdir: str, clip, label: str, layers: Sequence[str],
            heads: Sequence[int], queries: Sequence[str], out_dir: str,
            truth: str = None) -> List[str]:
  """PNG, GIF, JSON of `clip`'s attention per query; prints prediction, `truth`, kept keys."""
  # pylint: disable=g-import-not-at-top
  from vivit_knn import config as config_lib
  from vivit_knn.models.registry import build_model
  from vivit_knn.tools import attention_panels as ap, attention_plots, attention_stats
  from vivit_knn.train import run_info
  parsed = [ap.parse_query(q) for q in queries]
  info = run_info.read_run_info(workdir)
  names = info["class_names"]
  config_lib.check_model(config.model, info["input_shape"])
  params, step = run_info.restore_params(workdir)
  model = build_model(config.model, len(names))
  logits, records = attention_stats.record_attention(model, params, clip[None])
  chosen = attention_stats.select_layers(list(records), layers)
  ph, pw, pt = config.model.patch_size
  grid = (clip.shape[0] // pt, clip.shape[1] // ph, clip.shape[2] // pw)
  probs = np.exp(logits[0] - logits[0].max())
  probs /= probs.sum()
  top = int(np.argmax(probs))
  outcome = (f"predicted {names[top]} ({probs[top]:.2f})" +
             ("" if truth is None else f", true {truth}"))
  print(f"{label}: {outcome}")
  frames = attention_plots.display_frames(clip)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for text, query in zip(queries, parsed):
    ap.check_query(query, grid)
    panels = [p for p in (ap.build_panel(n, records[n], grid, query, heads or None)
                          for n in chosen) if p is not None]
    panels += ap.rollout_panels(records, chosen, grid, query)
    if not panels:
      raise ValueError(f"--query={text}: none of the chosen layers has this query (e.g. a "
                       "model without a CLS token: pass --query=t,y,x)")
    base = os.path.join(out_dir, f"{label}_{'q' + '_'.join(map(str, query)) if query else 'cls'}")
    title = (f"{config.get('experiment_name', '')} step {step}: {label}, query {text}, heads "
             f"{'all' if not heads else ','.join(map(str, heads))}; {outcome}")
    print(f"query {text}:\n" + "\n".join(
        "  " + attention_plots.row_label(p).replace("\n", "  ") for p in panels))
    written += [draw(panels, frames, (ph, pw, pt), title, base + ext, query) for draw, ext in
                ((attention_plots.plot_grid, ".png"), (attention_plots.write_gif, ".gif"))]
    written.append(_write_json(base + ".json", panels, label, text, heads, step, grid,
                               {n: float(p) for n, p in zip(names, probs)}, truth))
  return written


def _write_json(path: str, panels, label: str, query: str, heads, step: int, grid,
                probabilities: Dict[str, float], truth: str) -> str:
  """The numbers behind one query's pictures."""

  def plain(a):  # every array of a panel is float, NaN where no key
    return np.where(np.isnan(a), None, np.round(a, 6)).tolist()

  data: Dict[str, Any] = {
      "input": label, "true_label": truth, "query": query, "heads": list(heads) or "all",
      "step": step, "token_grid_t_h_w": list(grid), "probabilities": probabilities,
      "layers": [{"name": p.name, "layout": p.layout, "num_keys": p.num_keys,
                  "kept_per_query": p.kept_per_query, "weights_t_h_w": plain(p.weights),
                  "kept_share_t_h_w": plain(p.kept), "cls_key_weight_kept": p.cls,
                  "query_rows": {k: plain(v) for k, v in p.rows.items()}}
                 for p in panels]}
  with open(path, "w") as f:
    json.dump(data, f)
  return path


def main(argv: Sequence[str]) -> int:
  """Explains one clip and lists the files written."""
  del argv  # `cli.run` refuses stray arguments
  config = trained_run_config(_CONFIG.value, _WORKDIR.value)
  clip, label, truth = load_clip(config, _VIDEO.value, _INDEX.value)
  paths = explain(config, _WORKDIR.value, clip, label, _LAYERS.value, list(map(int, _HEADS.value)),
                  _QUERY.value, _OUTPUT_DIR.value or os.path.join(_WORKDIR.value, "explain"), truth)
  print("wrote:\n" + "\n".join(f"  {path}" for path in paths))
  return 0


if __name__ == "__main__":
  cli.run(main)
