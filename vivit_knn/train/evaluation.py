"""One evaluation pass and its report files, `<kind>_step_<N>_<clips>x<crops>.<ext>`.

Named by checkpoint step and test views, so evaluating with other views overwrites nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np
from clu import metric_writers
from etils import epath
from jax.experimental import multihost_utils

from vivit_knn.train import metrics, sharding, steps
from vivit_knn.train.checkpoint import resolve
from vivit_knn.train.experiment import Experiment
from vivit_knn.train.objective_table import two_heads
from vivit_knn.train.summary import TenthsCounter

# A confusion-matrix picture of more classes than this is unreadable; it is skipped.
PNG_MAX_CLASSES = metrics.DENSE_CONFUSION_MAX_CLASSES
# Above this many classes the console gets a pointer to the per-class file, not the table.
PRINTED_MAX_CLASSES = 200


def eval_views(exp: Experiment) -> Tuple[int, int]:
  """`(clips, crops)` of the test views the experiment's eval split uses (1x1 for clip sources)."""
  spec = getattr(exp.dataset, "spec", None)
  if spec is not None:
    return int(spec.num_test_clips), int(spec.num_test_crops)
  cfg = exp.config.dataset
  return int(cfg.get("num_test_clips", 1)), int(cfg.get("num_test_crops", 1))


def _gather_host(x: np.ndarray) -> np.ndarray:
  """This host's slice of a global batch -> the whole global batch, in process order."""
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def run_eval(exp: Experiment, params: Any, eval_step=None) -> Dict[str, Any]:
  """Scores `params` on the eval split.

  Returns the :class:`metrics.EvalAccumulator` result (verb/noun/action top-1 for a two-head
  CAST), plus `views` (`{'clips', 'crops'}`), `videos` (`{'listed', 'evaluated', 'skipped'}`
  test videos), `skipped_videos` (one line per video skipped on this host: where and why)
  and, with `eval.save_logits`, `logits` (`{'logits' [N, C], 'labels' [N], 'index' [N],
  'videos' [N]}` of the evaluated videos, in eval order).
  """
  eval_step = eval_step or steps.make_eval_step(exp)
  cast = exp.config.model.cast
  factors = (cast.num_verbs, cast.num_nouns) if two_heads(exp.config) else None
  acc = metrics.EvalAccumulator(exp.num_classes, factors=factors)
  save_logits = bool(exp.config.eval.save_logits)
  kept = {"logits": [np.zeros((0, exp.num_classes), np.float32)],
          "labels": [np.zeros(0, np.int64)], "index": [np.zeros(0, np.int64)]}
  progress = TenthsCounter(exp.dataset.split_counts("eval")["listed"], "evaluating",
                           "test videos", enabled=jax.process_index() == 0)
  for batch in exp.dataset.eval_batches(exp.config.eval.global_batch_size,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count()):
    index = _gather_host(np.asarray(batch["index"])) if save_logits else None
    out = jax.device_get(eval_step(params, sharding.shard_batch(batch, exp.mesh)))
    logits, labels, mask = (np.asarray(out[k]) for k in ("logits", "label", "mask"))
    acc.update(logits, labels, mask)
    progress.add(int(np.sum(mask != 0)))
    if save_logits:
      keep = mask != 0
      kept["logits"].append(logits[keep].astype(np.float32))
      kept["labels"].append(labels[keep].astype(np.int64))
      kept["index"].append(index[keep].astype(np.int64))
  result = acc.result()
  result["views"] = dict(zip(("clips", "crops"), eval_views(exp)))
  listed = int(exp.dataset.split_counts("eval")["listed"])
  evaluated = int(result["num_examples"])
  # Every listed video is either scored or skipped (bad or absent), on some host.
  result["videos"] = {"listed": listed, "evaluated": evaluated,
                      "skipped": max(listed - evaluated, 0)}
  result["skipped_videos"] = list(exp.dataset.skipped_sources("eval"))
  if save_logits:
    result["logits"] = {k: np.concatenate(v) for k, v in kept.items()}
    result["logits"]["videos"] = np.asarray(
        [exp.dataset.describe_example("eval", i) for i in result["logits"]["index"]], str)
  return result


def scalar_names(result: Dict[str, Any]) -> Tuple[str, ...]:
  """The scalar metrics of a `run_eval` result: top1, top5, loss (and verb/noun/action top1)."""
  return ("top1", "top5", "loss") + tuple(k for k in metrics.FACTOR_METRICS if k in result)


def _write_through_local(path: str, write: Callable[[str], Any]) -> None:
  """`write(local_path)`, then a copy to `path`: matplotlib and numpy write local files only."""
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, os.path.basename(path))
    write(local)
    epath.Path(path).write_bytes(epath.Path(local).read_bytes())


def write_eval_report(exp: Experiment, result: Dict[str, Any], workdir: str, step: int,
                      writer: Optional[metric_writers.MetricWriter] = None) -> Dict[str, str]:
  """Writes the `eval/<name>` scalars and the report files of a `run_eval` result.

  Files go to `<workdir>/eval/<kind>_step_<step>_<clips>x<crops>.<ext>`: `results` (JSON:
  the scalar metrics, step, views, video counts, per-class accuracy), `per_class` (text
  table), `confusion_matrix` (PNG, with `eval.confusion_matrix` and at most `PNG_MAX_CLASSES`
  classes, else a printed note and the JSON says why), `skipped` (the skipped test videos,
  if any; also stored in `result['skipped_file']`) and, with `eval.save_logits`, `logits`
  (npz: `logits`, `labels`, `index`, `videos`). Returns the paths by kind; only process 0 writes.
  """
  if jax.process_index() != 0:
    return {}
  out_dir = resolve(workdir) / "eval"
  out_dir.mkdir(parents=True, exist_ok=True)
  names = exp.dataset.info.class_names
  views, videos = result["views"], result["videos"]
  suffix = f"step_{int(step)}_{int(views['clips'])}x{int(views['crops'])}"
  paths = {"per_class": str(out_dir / f"per_class_{suffix}.txt")}
  epath.Path(paths["per_class"]).write_text(
      metrics.format_class_table(result["support"], result["correct"], names) + "\n")
  png_note = None
  if not exp.config.eval.confusion_matrix:
    png_note = "off (eval.confusion_matrix=False)"
  elif result.get("confusion_matrix") is None or len(names) > PNG_MAX_CLASSES:
    png_note = (f"skipped: {len(names)} classes is more than the {PNG_MAX_CLASSES} a "
                "readable picture holds")
    print(f"confusion-matrix PNG {png_note}; the per-class table has every class")
  else:
    paths["confusion_matrix"] = str(out_dir / f"confusion_matrix_{suffix}.png")
    title = f"{exp.config.experiment_name} step {step}"
    _write_through_local(paths["confusion_matrix"], lambda local: metrics.save_confusion_matrix_png(
        result["confusion_matrix"], names, local, title=title))
  if videos["skipped"]:
    paths["skipped"] = str(out_dir / f"skipped_{suffix}.txt")
    lines = result.get("skipped_videos") or []
    missing = videos["skipped"] - len(lines)
    if missing > 0:  # Found by other hosts, whose lists are not gathered.
      lines = lines + [f"({missing} more skipped on other hosts; see their logs)"]
    epath.Path(paths["skipped"]).write_text("\n".join(lines) + "\n")
    result["skipped_file"] = paths["skipped"]
  if "logits" in result:
    paths["logits"] = str(out_dir / f"logits_{suffix}.npz")
    _write_through_local(paths["logits"], lambda local: np.savez(local, **result["logits"]))
  scalars = scalar_names(result)
  summary = {k: float(result[k]) for k in scalars}
  summary.update(num_examples=int(result["num_examples"]), step=int(step),
                 views={"clips": int(views["clips"]), "crops": int(views["crops"])},
                 videos={k: int(v) for k, v in videos.items()},
                 files={k: os.path.basename(v) for k, v in paths.items()})
  if png_note:
    summary["confusion_matrix_png"] = png_note
  summary["per_class_accuracy"] = {
      n: (None if np.isnan(a) else float(a))
      for n, a in zip(names, result["per_class_accuracy"])}
  paths["results"] = str(out_dir / f"results_{suffix}.json")
  epath.Path(paths["results"]).write_text(json.dumps(summary, indent=2))
  if writer is not None:
    writer.write_scalars(step, {f"eval/{k}": summary[k] for k in scalars})
    writer.flush()
  return paths


def format_result(result: Dict[str, Any], class_names) -> str:
  """Human-readable `run_eval` result: metrics, views, video counts, per-class table (if few)."""
  head = (f"eval: top1={result['top1']:.4f} top5={result['top5']:.4f} "
          f"loss={result['loss']:.4f}")
  for key in metrics.FACTOR_METRICS:
    if key in result:
      head += f" {key}={result[key]:.4f}"
  views, videos = result["views"], result["videos"]
  head += (f" examples={int(result['num_examples'])} "
           f"views={views['clips']}x{views['crops']} (clips x crops)")
  counted = (f"evaluated {videos['evaluated']} of {videos['listed']} listed test videos "
             f"({videos['skipped']} skipped")
  if videos["skipped"] and result.get("skipped_file"):
    counted += f", see {result['skipped_file']}"
  lines = [head, counted + ")"]
  if len(class_names) <= PRINTED_MAX_CLASSES:
    lines.append(metrics.format_class_table(result["support"], result["correct"], class_names))
  else:
    lines.append(f"per-class accuracy of {len(class_names)} classes: see the per_class file "
                 f"of this eval (not printed above {PRINTED_MAX_CLASSES} classes)")
  return "\n".join(lines)
