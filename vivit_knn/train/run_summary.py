"""The run summary: what a training run is about to do, in numbers, printed and kept.

At train start, process 0 prints a short aligned block and writes the same facts to
`<workdir>/run_summary.json`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Mapping, Optional

import jax

from vivit_knn.train.checkpoint import write_file
from vivit_knn.train.model_cost import model_stats

RUN_SUMMARY = "run_summary.json"


def summarize_experiment(exp: Any) -> Dict[str, Any]:
  """The summary of an `Experiment` as a JSON-ready dict.

  GFLOPs (multiply-adds) come from compiling one clip's forward (`model_cost`); when that
  fails, `gflops_note` says why instead.
  """
  config, info, plan = exp.config, exp.dataset.info, exp.plan
  shape = tuple(info.input_shape)
  params = exp.abstract_state().params
  note = ""
  try:
    stats = model_stats(config.model, shape, info.num_classes)
    gflops = stats["gflops"]
    if stats["has_loops"]:
      note = "k-NN threshold search undercounted"
  except Exception as err:  # pylint: disable=broad-except  # the count is informative only
    gflops, note = None, f"counting failed: {type(err).__name__}: {str(err).splitlines()[0]}"
  devices = exp.mesh.devices.flatten()
  per_epoch = plan.steps_per_epoch
  return {
      "experiment": config.experiment_name,
      "dataset": config.dataset.name,
      "splits": {split: dict(exp.dataset.split_counts(split)) for split in ("train", "eval")},
      "global_batch_size": int(config.train.global_batch_size),
      "steps_per_epoch": round(per_epoch, 4),
      "total_steps": int(plan.total_steps),
      "total_steps_from": plan.total_source,
      "epochs": round(plan.total_steps / per_epoch, 4) if per_epoch > 0 else None,
      "warmup_steps": int(plan.warmup_steps),
      "warmup_steps_from": plan.warmup_source,
      "params": int(sum(math.prod(p.shape) for p in jax.tree.leaves(params))),
      "gflops_per_clip": None if gflops is None else float(f"{gflops:.4g}"),
      "gflops_note": note,
      "input_shape": [int(v) for v in shape],
      "mesh": {k: int(v) for k, v in dict(exp.mesh.shape).items()},
      "devices": {"count": len(devices), "kind": devices[0].device_kind,
                  "processes": jax.process_count()},
  }


def _counts(c: Mapping[str, Optional[int]]) -> str:
  if c.get("readable") is None:
    return (f"{c.get('listed')} listed, {c.get('skipped')} skipped so far (readable: known "
            "once decoded)")
  return f"{c.get('listed')} listed, {c['readable']} readable, {c.get('skipped')} skipped"


def format_run_summary(summary: Mapping[str, Any]) -> str:
  """The summary as a short aligned text block, one fact per line."""
  s = summary
  gflops = "not counted" if s["gflops_per_clip"] is None else f"{s['gflops_per_clip']:.4g}"
  if s.get("gflops_note"):
    gflops += f" ({s['gflops_note']})"
  epochs = ("" if s["epochs"] is None or s["total_steps_from"].endswith("epochs")
            else f" = {s['epochs']:g} epochs")
  rows = [
      ("dataset", s["dataset"]),
      *((f"{name} split", _counts(c)) for name, c in s["splits"].items()),
      ("global batch", str(s["global_batch_size"])),
      ("steps per epoch", f"{s['steps_per_epoch']:g}"),
      ("total steps", f"{s['total_steps']} ({s['total_steps_from']}{epochs})"),
      ("warmup steps", f"{s['warmup_steps']} ({s['warmup_steps_from']})"),
      ("parameters", f"{s['params']:,} ({s['params'] / 1e6:.2f} M)"),
      ("GFLOPs per clip", gflops),
      ("input clip", "x".join(str(v) for v in s["input_shape"])),
      ("mesh", " ".join(f"{k}={v}" for k, v in s["mesh"].items())),
      ("devices", f"{s['devices']['count']} x {s['devices']['kind']}, "
                  f"{s['devices']['processes']} process(es)"),
  ]
  width = max(len(name) for name, _ in rows)
  return "\n".join([f"run summary: {s['experiment']}"]
                   + [f"  {name.ljust(width)}  {value}" for name, value in rows])


def write_run_summary(workdir: str, summary: Mapping[str, Any]) -> str:
  """Writes `summary` to `<workdir>/run_summary.json` (atomically) and returns the path."""
  return write_file(workdir, RUN_SUMMARY, json.dumps(summary, indent=2) + "\n")
