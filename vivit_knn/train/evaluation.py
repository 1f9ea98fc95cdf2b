"""One evaluation pass and its report files, named by checkpoint step and view setting.

Every file of one evaluation is named `<kind>_step_<N>_<clips>x<crops>.<ext>`, so
evaluating the same checkpoint with other test views never overwrites a report.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
from clu import metric_writers
from etils import epath

from vivit_knn.train import metrics, sharding, steps
from vivit_knn.train.checkpoint import resolve
from vivit_knn.train.experiment import Experiment

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


def action_factors(config) -> Optional[Tuple[int, int]]:
  """`(num_verbs, num_nouns)` of a two-head (verb, noun) model's classes, else None.

  A CAST model with `model.cast.num_verbs > 0` scores the `num_verbs * num_nouns`
  actions `verb * num_nouns + noun` (see `vivit_knn.train.multihead`).
  """
  model = config.model
  cast = model.get("cast")
  if model.get("name") != "cast" or cast is None:
    return None
  factors = int(cast.get("num_verbs", 0)), int(cast.get("num_nouns", 0))
  return factors if min(factors) > 0 else None


def report_suffix(step: int, views: Tuple[int, int]) -> str:
  """`step_<N>_<clips>x<crops>`: the part every report file name of one eval shares."""
  return f"step_{int(step)}_{int(views[0])}x{int(views[1])}"


def _gather_host(x: np.ndarray) -> np.ndarray:
  """This host's slice of a global batch -> the whole global batch, in process order."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def run_eval(exp: Experiment, params: Any, eval_step=None) -> Dict[str, Any]:
  """Scores `params` on the eval split.

  Returns:
    The :class:`metrics.EvalAccumulator` result (with `verb_top1`, `noun_top1` and
    `action_top1` for a two-head model, see :func:`action_factors`), plus `views`
    (`{'clips', 'crops'}`), `videos` (`{'listed', 'evaluated', 'skipped'}` test videos),
    `skipped_videos` (one line per video skipped on this host: where and why)
    and, with `eval.save_logits`, `logits` (`{'logits' [N, C], 'labels' [N],
    'index' [N], 'videos' [N]}` for the evaluated videos, in eval order).
  """
  eval_step = eval_step or steps.make_eval_step(exp)
  acc = metrics.EvalAccumulator(exp.num_classes, factors=action_factors(exp.config))
  save_logits = bool(exp.config.eval.get("save_logits", False))
  kept = {"logits": [], "labels": [], "index": []}
  batches = exp.dataset.eval_batches(
      exp.config.eval.global_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  for batch in batches:
    index = _gather_host(np.asarray(batch["index"])) if save_logits else None
    out = jax.device_get(eval_step(params, sharding.shard_batch(batch, exp.mesh)))
    logits, labels, mask = (np.asarray(out[k]) for k in ("logits", "label", "mask"))
    acc.update(logits, labels, mask)
    if save_logits:
      keep = mask != 0
      kept["logits"].append(logits[keep].astype(np.float32))
      kept["labels"].append(labels[keep].astype(np.int64))
      kept["index"].append(index[keep].astype(np.int64))
  result = acc.result()
  clips, crops = eval_views(exp)
  result["views"] = {"clips": clips, "crops": crops}
  listed = int(exp.dataset.split_counts("eval")["listed"])
  evaluated = int(result["num_examples"])
  # Every listed video is either scored or skipped (bad or absent), on some host.
  result["videos"] = {"listed": listed, "evaluated": evaluated,
                      "skipped": max(listed - evaluated, 0)}
  result["skipped_videos"] = list(exp.dataset.skipped_sources("eval"))
  if save_logits:
    index = np.concatenate(kept["index"]) if kept["index"] else np.zeros(0, np.int64)
    result["logits"] = {
        "logits": (np.concatenate(kept["logits"]) if kept["logits"]
                   else np.zeros((0, exp.num_classes), np.float32)),
        "labels": np.concatenate(kept["labels"]) if kept["labels"] else np.zeros(0, np.int64),
        "index": index,
        "videos": np.asarray([exp.dataset.describe_example("eval", i) for i in index], str),
    }
  return result


def _write_png(exp: Experiment, result: Dict[str, Any], names, path: str, step: int) -> None:
  with tempfile.TemporaryDirectory() as tmp:  # matplotlib writes local files only
    local = metrics.save_confusion_matrix_png(
        result["confusion_matrix"], names, os.path.join(tmp, "cm.png"),
        title=f"{exp.config.experiment_name} step {step}")
    epath.Path(path).write_bytes(epath.Path(local).read_bytes())


def write_eval_report(exp: Experiment, result: Dict[str, Any], workdir: str, step: int,
                      writer: Optional[metric_writers.MetricWriter] = None) -> Dict[str, str]:
  """Writes scalars, a per-class table, JSON results, the confusion-matrix PNG and lists.

  Files go to `<workdir>/eval/<kind>_step_<step>_<clips>x<crops>.<ext>`: `results` (JSON:
  metrics (with `verb_top1`, `noun_top1` and `action_top1` when the result has them,
  also written as `eval/<name>` scalars), checkpoint step, views, listed/evaluated/skipped
  videos, per-class accuracy),
  `per_class` (text table), `confusion_matrix` (PNG, with `eval.confusion_matrix` and at most
  `PNG_MAX_CLASSES` classes; otherwise a printed note, and the JSON says why), `skipped`
  (the skipped test videos, when there are any) and, with `eval.save_logits`, `logits`
  (npz: `logits`, `labels`, `index`, `videos`). The path of the skipped list is also
  stored in `result['skipped_file']` for :func:`format_result`.

  Returns:
    The paths written, by kind. Only process 0 writes (others return `{}`).
  """
  if jax.process_index() != 0:
    return {}
  out_dir = resolve(workdir) / "eval"
  out_dir.mkdir(parents=True, exist_ok=True)
  names = exp.dataset.info.class_names
  views = result.get("views") or dict(zip(("clips", "crops"), eval_views(exp)))
  suffix = report_suffix(step, (views["clips"], views["crops"]))
  paths = {}
  paths["per_class"] = str(out_dir / f"per_class_{suffix}.txt")
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
    _write_png(exp, result, names, paths["confusion_matrix"], step)
  videos = result.get("videos")
  if videos and videos["skipped"]:
    paths["skipped"] = str(out_dir / f"skipped_{suffix}.txt")
    lines = result.get("skipped_videos") or []
    missing = videos["skipped"] - len(lines)
    if missing > 0:  # Found by other hosts, whose lists are not gathered.
      lines = lines + [f"({missing} more skipped on other hosts; see their logs)"]
    epath.Path(paths["skipped"]).write_text("\n".join(lines) + "\n")
    result["skipped_file"] = paths["skipped"]
  if "logits" in result:
    paths["logits"] = str(out_dir / f"logits_{suffix}.npz")
    with tempfile.TemporaryDirectory() as tmp:
      local = os.path.join(tmp, "logits.npz")
      np.savez(local, **result["logits"])
      epath.Path(paths["logits"]).write_bytes(epath.Path(local).read_bytes())
  scalars = _scalar_keys(result)
  summary = {k: float(result[k]) for k in scalars}
  summary["num_examples"] = int(result["num_examples"])
  summary["step"] = int(step)
  summary["views"] = {"clips": int(views["clips"]), "crops": int(views["crops"])}
  if videos:
    summary["videos"] = {k: int(v) for k, v in videos.items()}
  summary["files"] = {k: os.path.basename(v) for k, v in paths.items()}
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


def _scalar_keys(result: Dict[str, Any]) -> Tuple[str, ...]:
  """The scalar metrics of `result`: top-1, top-5, loss, then any verb/noun/action top-1."""
  return ("top1", "top5", "loss") + tuple(k for k in metrics.FACTOR_METRICS if k in result)


def videos_line(result: Dict[str, Any]) -> Optional[str]:
  """`evaluated X of Y listed test videos (Z skipped, see <file>)`, or None if not counted."""
  videos = result.get("videos")
  if not videos:
    return None
  line = (f"evaluated {videos['evaluated']} of {videos['listed']} listed test videos "
          f"({videos['skipped']} skipped")
  if videos["skipped"] and result.get("skipped_file"):
    line += f", see {result['skipped_file']}"
  return line + ")"


def format_result(result: Dict[str, Any], class_names) -> str:
  """Human-readable summary: top-1/top-5/loss, views, video counts and the per-class table.

  A two-head model's result also has `verb_top1`, `noun_top1` and `action_top1` on the
  `eval:` line.

  The table is left out above `PRINTED_MAX_CLASSES` classes (it is always in the
  per-class file `write_eval_report` writes).
  """
  head = (f"eval: top1={result['top1']:.4f} top5={result['top5']:.4f} "
          f"loss={result['loss']:.4f}")
  for key in metrics.FACTOR_METRICS:
    if key in result:
      head += f" {key}={result[key]:.4f}"
  head += f" examples={int(result['num_examples'])}"
  views = result.get("views")
  if views:
    head += f" views={views['clips']}x{views['crops']} (clips x crops)"
  lines = [head]
  counted = videos_line(result)
  if counted:
    lines.append(counted)
  if len(class_names) <= PRINTED_MAX_CLASSES:
    lines.append(metrics.format_class_table(result["support"], result["correct"], class_names))
  else:
    lines.append(f"per-class accuracy of {len(class_names)} classes: see the per_class file "
                 "of this eval (not printed above "
                 f"{PRINTED_MAX_CLASSES} classes)")
  return "\n".join(lines)
