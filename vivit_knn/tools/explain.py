r"""Shows which keys a query keeps (k-NN) and how it weighs them, layer by layer.

    python -m vivit_knn.tools.explain --config=configs/synthetic_dk.py \
        --workdir=runs/synthetic_dk --index=3
    python -m vivit_knn.tools.explain --config=configs/ucf101_dk.py --workdir=runs/ucf \
        --video=clip.avi --layers=0,1 --heads=0,2 --query=cls --query=1,3,4

Reads the video as `--mode=infer` does (its first view), or for a synthetic-task
run eval clip `--index`, with the run's stored config and newest checkpoint. For
each `--query` (`cls`, or `t,y,x` on the token grid: tubelet time, patch row,
patch column) it writes to `<workdir>/explain/`: `<input>_<query>.png` (frames
across, layers down; colour: the query's attention weight, mean over `--heads`;
cyan box: a kept key, its opacity the share of heads keeping it; a rollout row
for each run of layers over the same tokens), `.gif` (the same over every input
frame) and `.json` (the numbers behind them).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np
from absl import flags
from ml_collections import ConfigDict, config_flags

from vivit_knn import cli
from vivit_knn.tools import run_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.")
_VIDEO = flags.DEFINE_string("video", None, "Video file to explain.")
_INDEX = flags.DEFINE_integer("index", None, "Synthetic-task runs: eval clip index instead "
                              "of --video.")
_LAYERS = flags.DEFINE_list("layers", [], "Attention layers: names or indices (default: all).")
_HEADS = flags.DEFINE_list("heads", [], "Heads to average (default: all).")
_QUERY = flags.DEFINE_multi_string("query", ["cls"], "'cls' or 't,y,x' on the token grid; "
                                   "repeat for several.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Where results go (default: <workdir>/explain).")


def load_clip(config: ConfigDict, video: str, index: int):
  """`(clip [T, H, W, C], input label)` from `video` or, for synthetic runs, eval clip `index`."""
  if (video is None) == (index is None):
    raise ValueError("give exactly one of --video=<file> and --index=<n> (synthetic runs)")
  if video is not None:
    from vivit_knn.data.registry import load_video_views  # pylint: disable=g-import-not-at-top
    views = np.asarray(load_video_views(video, config.dataset), np.float32)
    return views[0], os.path.splitext(os.path.basename(video))[0]
  if config.dataset.name != "synthetic":
    raise ValueError(f"--index works for synthetic-task runs only (this run's dataset is "
                     f"{config.dataset.name!r}); pass --video=<file>")
  from vivit_knn.data.registry import build_dataset  # pylint: disable=g-import-not-at-top
  dataset = build_dataset(config.dataset)
  n = dataset.info.num_eval_examples
  if not 0 <= index < n:
    raise ValueError(f"--index={index} is outside the synthetic eval set [0, {n})")
  clips, _ = dataset.generate("eval", [index])
  return clips[0], f"eval{index}"


def _ints(values: Sequence[str], flag: str) -> List[int]:
  try:
    return [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{flag} takes integers, got {','.join(values)}") from None


def explain(config: ConfigDict, workdir: str, clip, label: str, layers: Sequence[str],
            heads: Sequence[int], queries: Sequence[str], out_dir: str) -> List[str]:
  """Records the model's attention on `clip`, writes PNG, GIF and JSON per query; their paths."""
  from vivit_knn import config as config_lib  # pylint: disable=g-import-not-at-top
  from vivit_knn.models.registry import build_model  # pylint: disable=g-import-not-at-top
  from vivit_knn.tools import attention_panels as ap  # pylint: disable=g-import-not-at-top
  from vivit_knn.tools import attention_plots  # pylint: disable=g-import-not-at-top
  from vivit_knn.tools import attention_stats  # pylint: disable=g-import-not-at-top
  from vivit_knn.train import run_info  # pylint: disable=g-import-not-at-top

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
    tag = "cls" if query is None else "q" + "_".join(map(str, query))
    base = os.path.join(out_dir, f"{label}_{tag}")
    title = (f"{config.get('experiment_name', '')} step {step}: {label}, query {text}, heads "
             f"{'all' if not heads else ','.join(map(str, heads))}; predicted "
             f"{names[top]} ({probs[top]:.2f})")
    patch = (ph, pw, pt)
    written.append(attention_plots.plot_grid(panels, frames, patch, title, base + ".png", query))
    written.append(attention_plots.write_gif(panels, frames, patch, title, base + ".gif", query))
    written.append(_write_json(base + ".json", panels, label, text, heads, step, grid,
                               {n: float(p) for n, p in zip(names, probs)}))
  return written


def _write_json(path: str, panels, label: str, query: str, heads, step: int, grid,
                probabilities: Dict[str, float]) -> str:
  """The numbers behind one query's pictures."""

  def plain(a):
    return np.where(np.isnan(a), None, np.round(a, 6)).tolist() if a.dtype.kind == "f" \
        else a.tolist()

  data: Dict[str, Any] = {
      "input": label, "query": query, "heads": list(heads) or "all", "step": step,
      "token_grid_t_h_w": list(grid), "probabilities": probabilities,
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
  config = run_flags.trained_run_config(_CONFIG.value, _WORKDIR.value)
  clip, label = load_clip(config, _VIDEO.value, _INDEX.value)
  paths = explain(config, _WORKDIR.value, clip, label, _LAYERS.value, _ints(_HEADS.value, "heads"),
                  _QUERY.value, _OUTPUT_DIR.value or os.path.join(_WORKDIR.value, "explain"))
  print("wrote:\n" + "\n".join(f"  {path}" for path in paths))
  return 0


if __name__ == "__main__":
  cli.run(main)
