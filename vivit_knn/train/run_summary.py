"""The run summary: what a training run is about to do, in numbers, printed and kept.

At train start, process 0 prints a short aligned block and writes the same facts
to `<workdir>/run_summary.json`: the dataset's split sizes (videos listed,
readable and skipped), steps per epoch, total and warmup steps with the settings
they came from, parameters, GFLOPs per clip, the mesh and the devices.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Mapping, Optional

import jax

from vivit_knn.train.checkpoint import resolve
from vivit_knn.train.model_cost import model_stats
from vivit_knn.train.optim import StepPlan

RUN_SUMMARY = "run_summary.json"


def build_run_summary(*, experiment_name: str, dataset_name: str,
                      split_counts: Mapping[str, Mapping[str, Optional[int]]],
                      global_batch_size: int, plan: StepPlan, num_params: int,
                      gflops_per_clip: Optional[float], input_shape, mesh_shape: Mapping[str, int],
                      num_devices: int, device_kind: str, num_processes: int,
                      gflops_note: str = "") -> Dict[str, Any]:
  """The summary as a JSON-ready dict (a pure function of its arguments).

  Args:
    experiment_name: `config.experiment_name`.
    dataset_name: `config.dataset.name`.
    split_counts: `{'train': counts, 'eval': counts}`, each as
      `VideoDataset.split_counts` gives it (`listed`, `readable`, `skipped`).
    global_batch_size: `train.global_batch_size`.
    plan: the run's steps (`vivit_knn.train.optim.plan_steps`).
    num_params: the model's parameter count.
    gflops_per_clip: multiply-add GFLOPs of one clip's forward, or None when not counted.
    input_shape: one clip's `(T, H, W, C)`.
    mesh_shape: mesh axis sizes by name.
    num_devices: devices in the run.
    device_kind: e.g. `'cpu'` or `'TPU v4'`.
    num_processes: processes in the run.
    gflops_note: why GFLOPs are missing or approximate ('' when neither).

  Returns:
    The summary.
  """
  per_epoch = plan.steps_per_epoch
  return {
      "experiment": experiment_name,
      "dataset": dataset_name,
      "splits": {name: dict(counts) for name, counts in split_counts.items()},
      "global_batch_size": int(global_batch_size),
      "steps_per_epoch": round(per_epoch, 4),
      "total_steps": int(plan.total_steps),
      "total_steps_from": plan.total_source,
      "epochs": round(plan.total_steps / per_epoch, 4) if per_epoch > 0 else None,
      "warmup_steps": int(plan.warmup_steps),
      "warmup_steps_from": plan.warmup_source,
      "params": int(num_params),
      "gflops_per_clip": None if gflops_per_clip is None else float(f"{gflops_per_clip:.4g}"),
      "gflops_note": gflops_note,
      "input_shape": [int(v) for v in input_shape],
      "mesh": {k: int(v) for k, v in mesh_shape.items()},
      "devices": {"count": int(num_devices), "kind": device_kind,
                  "processes": int(num_processes)},
  }


def _counts(c: Mapping[str, Optional[int]]) -> str:
  if c.get("readable") is None:
    return (f"{c.get('listed')} listed, {c.get('skipped')} skipped so far (readable: known "
            "once decoded)")
  return f"{c.get('listed')} listed, {c['readable']} readable, {c.get('skipped')} skipped"


def format_run_summary(summary: Mapping[str, Any]) -> str:
  """The summary as a short aligned text block.

  Args:
    summary: a dict from `build_run_summary`.

  Returns:
    The block, one fact per line.
  """
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
  path = resolve(workdir) / RUN_SUMMARY
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{RUN_SUMMARY}.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(summary, indent=2) + "\n")
  tmp.replace(path)
  return str(path)


def summarize_experiment(exp: Any) -> Dict[str, Any]:
  """`build_run_summary` for an `Experiment` (counts, parameters, GFLOPs, mesh, devices).

  GFLOPs come from compiling one clip's forward (`vivit_knn.train.model_cost`);
  when that fails, the summary says why instead.

  Args:
    exp: the run's `vivit_knn.train.experiment.Experiment`.

  Returns:
    The summary dict.
  """
  config, info = exp.config, exp.dataset.info
  shape = tuple(info.input_shape)
  params = jax.eval_shape(exp.init_params, jax.random.key(0))
  num_params = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
  note = ""
  try:
    stats = model_stats(config.model, shape, info.num_classes)
    gflops = stats["gflops"]
    if stats["has_loops"]:
      note = "k-NN threshold search undercounted"
  except Exception as err:  # pylint: disable=broad-except  # the count is informative only
    gflops, note = None, f"counting failed: {type(err).__name__}: {str(err).splitlines()[0]}"
  devices = exp.mesh.devices.flatten()
  return build_run_summary(
      experiment_name=config.experiment_name, dataset_name=config.dataset.name,
      split_counts={split: exp.dataset.split_counts(split) for split in ("train", "eval")},
      global_batch_size=config.train.global_batch_size, plan=exp.plan, num_params=num_params,
      gflops_per_clip=gflops, input_shape=shape, mesh_shape=dict(exp.mesh.shape),
      num_devices=len(devices), device_kind=devices[0].device_kind,
      num_processes=jax.process_count(), gflops_note=note)
