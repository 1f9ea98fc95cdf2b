"""One evaluation pass: top-1/top-5, loss, per-class accuracy and a confusion-matrix PNG."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Optional

import jax
import numpy as np
from etils import epath

from vivit_knn.train import metrics, sharding, steps
from vivit_knn.train.checkpoint import resolve
from vivit_knn.train.experiment import Experiment
from vivit_knn.train.summary import MetricWriter


def run_eval(exp: Experiment, params: Any, eval_step=None) -> Dict[str, Any]:
  """Scores `params` on the eval split; returns the EvalAccumulator result dict."""
  eval_step = eval_step or steps.make_eval_step(exp)
  acc = metrics.EvalAccumulator(exp.num_classes)
  batches = exp.dataset.eval_batches(
      exp.config.eval.global_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  for batch in batches:
    out = eval_step(params, sharding.shard_batch(batch, exp.mesh))
    out = jax.device_get(out)
    acc.update(np.asarray(out["logits"]), np.asarray(out["label"]), np.asarray(out["mask"]))
  return acc.result()


def write_eval_report(exp: Experiment, result: Dict[str, Any], workdir: str, step: int,
                      writer: Optional[MetricWriter] = None) -> Dict[str, str]:
  """Writes scalars, a per-class table, JSON results and the confusion-matrix PNG.

  Returns the paths written. Only process 0 writes.
  """
  if jax.process_index() != 0:
    return {}
  out_dir = resolve(workdir) / "eval"
  out_dir.mkdir(parents=True, exist_ok=True)
  names = exp.dataset.info.class_names
  paths = {}
  report = metrics.format_per_class_report(result["confusion_matrix"], names)
  paths["per_class"] = str(out_dir / f"per_class_step_{step}.txt")
  epath.Path(paths["per_class"]).write_text(report + "\n")
  if exp.config.eval.confusion_matrix:
    paths["confusion_matrix"] = str(out_dir / f"confusion_matrix_step_{step}.png")
    with tempfile.TemporaryDirectory() as tmp:  # matplotlib writes local files only
      local = metrics.save_confusion_matrix_png(
          result["confusion_matrix"], names, os.path.join(tmp, "cm.png"),
          title=f"{exp.config.experiment_name} step {step}")
      epath.Path(paths["confusion_matrix"]).write_bytes(epath.Path(local).read_bytes())
  summary = {k: float(result[k]) for k in ("top1", "top5", "loss")}
  summary["num_examples"] = int(result["num_examples"])
  summary["step"] = int(step)
  summary["per_class_accuracy"] = {
      n: (None if np.isnan(a) else float(a))
      for n, a in zip(names, result["per_class_accuracy"])}
  paths["results"] = str(out_dir / f"results_step_{step}.json")
  epath.Path(paths["results"]).write_text(json.dumps(summary, indent=2))
  if writer is not None:
    writer.write_scalars(step, {f"eval/{k}": summary[k] for k in ("top1", "top5", "loss")})
    writer.flush()
  return paths


def format_result(result: Dict[str, Any], class_names) -> str:
  """Human-readable summary: top-1/top-5/loss and the per-class table."""
  head = (f"eval: top1={result['top1']:.4f} top5={result['top5']:.4f} "
          f"loss={result['loss']:.4f} examples={int(result['num_examples'])}")
  return head + "\n" + metrics.format_per_class_report(result["confusion_matrix"], class_names)
