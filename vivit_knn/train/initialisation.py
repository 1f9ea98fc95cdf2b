"""Where a run's first state comes from, in this order: resume, configured checkpoints, scratch.

1. `--workdir` holds a checkpoint: the newest one is restored (`init_from` is not read again).
2. `config.init_from` names checkpoints: a fresh model gets the parts they provide
   (`init_from.checkpoint_path`, see `vivit_knn.weights.init_from`, and CAST's two experts).
3. Else the fresh random initialisation.

The `InitSummary` says which, with every file read (the TSD teachers' too), the parameters
restored, inflated, copied, zeroed and left fresh per top-level module, and the source arrays
skipped; the trainer prints it and writes `<workdir>/init_summary.json`. `check_sources` stops
a fresh run whose files are missing before its workdir is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit_knn import config as config_lib
from vivit_knn.errors import UserError
from vivit_knn.train import checkpoint
from vivit_knn.train.distill import teacher_sources
from vivit_knn.train.experiment import Experiment, TrainState
from vivit_knn.weights import init_from as init_lib
from vivit_knn.weights.cast_experts import merge_expert_params
from vivit_knn.weights.load import load_checkpoint
from vivit_knn.weights.tree import flatten, key_name

SUMMARY_FILE = "init_summary.json"
EXPERTS = ("spatial_expert", "temporal_expert")


@dataclasses.dataclass
class InitSummary:
  """What the initial state was made of.

  `source`: 'resume', 'checkpoints' or 'scratch'. `sources`: the configured files, as
  `(config field, path, format)`. `modules`: module -> category -> number of parameters.
  `skipped`: the source arrays with no place in the model (deeper blocks, classifiers).
  """

  source: str
  detail: str
  sources: List[Tuple[str, str, str]] = dataclasses.field(default_factory=list)
  modules: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)
  skipped: List[str] = dataclasses.field(default_factory=list)

  def totals(self) -> Dict[str, int]:
    """Parameters per category over the whole model."""
    return {c: sum(m.get(c, 0) for m in self.modules.values()) for c in init_lib.CATEGORIES}

  def lines(self) -> List[str]:
    """The human-readable summary: one headline, then a table by top-level module."""
    out = [f"initialisation: {self.source} ({self.detail})"]
    out += [f"  {field}={path} [{fmt}]" for field, path, fmt in self.sources]
    if self.source == "checkpoints":
      groups = ", ".join(sorted({"/".join(p.split("/")[:2]) for p in self.skipped}))
      out.append(f"  skipped source arrays: {len(self.skipped)}" + (f" ({groups})" * bool(groups)))
    if not self.modules:
      return out
    width = max(len(m) for m in list(self.modules) + ["module"])
    header = "".join(f"{c:>12}" for c in init_lib.CATEGORIES)
    out.append(f"  {'module':<{width}}{header}")
    rows = sorted(self.modules.items()) + [("total", self.totals())]
    for name, counts in rows:
      cells = "".join(f"{counts.get(c, 0):>12,}" for c in init_lib.CATEGORIES)
      out.append(f"  {name:<{width}}{cells}")
    return out

  def to_json(self) -> Dict[str, Any]:
    """A JSON-ready dict of the summary."""
    return {"source": self.source, "detail": self.detail,
            "sources": [{"field": f, "path": p, "format": fmt} for f, p, fmt in self.sources],
            "modules": self.modules, "totals": self.totals(),
            "skipped_source_arrays": len(self.skipped), "skipped": self.skipped}


def configured_sources(config: ml_collections.ConfigDict) -> List[Tuple[str, str, str]]:
  """`(field, path, format)` of every checkpoint `config.init_from` names."""
  init = config.init_from
  fields = [("init_from", init)] + [(f"init_from.{expert}", init[expert]) for expert in EXPERTS]
  return [(f"{field}.checkpoint_path", cfg.checkpoint_path, cfg.checkpoint_format)
          for field, cfg in fields if cfg.checkpoint_path]


def check_sources(config: ml_collections.ConfigDict) -> None:
  """Checks `config.init_from` and that its files and stage 1's teacher can be read.

  For a fresh run, before anything is written to its workdir: UserError naming the
  config key and the path. (Stage 2's teacher run may still be training.)
  """
  config_lib.check_keys(config)  # a wrong key or model setting is reported first
  config_lib.check_model(config.model, config_lib.clip_shape(config.dataset))
  config_lib.check_init_from(config)
  for field, path, fmt in configured_sources(config) + teacher_sources(config):
    if fmt != "run" and not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
      why = "cannot be read (permissions)" if os.path.exists(path) else "does not exist"
      raise UserError(f"{field}={path} {why}")


def _module_counts(params: Any, report: Dict[str, str]) -> Dict[str, Dict[str, int]]:
  """Parameters per top-level module and category (arrays or shape structs)."""
  counts: Dict[str, Dict[str, int]] = {}
  for key_path, value in jax.tree_util.tree_leaves_with_path(params):
    path = key_name(key_path)
    category = report.get(path, init_lib.FRESH)
    module = counts.setdefault(path.split("/")[0], {})
    module[category] = module.get(category, 0) + math.prod(value.shape)
  return counts


def _with_experts(params: Any, config: ml_collections.ConfigDict,
                  report: Dict[str, str]) -> Any:
  """Places the configured CAST experts into `params`, marking their leaves restored."""
  trees = {}
  for expert, prefix in zip(EXPERTS, ("spatial", "temporal")):
    cfg = config.init_from[expert]
    if not cfg.checkpoint_path:
      continue
    trees[prefix] = load_checkpoint(cfg.checkpoint_path, cfg.checkpoint_format,
                                    num_heads=config.model.num_heads,
                                    field=f"init_from.{expert}")
    report.update({f"{prefix}/{p}": init_lib.RESTORED for p in flatten(trees[prefix])})
  if not trees:
    return params
  return merge_expert_params(params, spatial=trees.get("spatial"), temporal=trees.get("temporal"))


def initial_params(exp: Experiment, rng: jax.Array) -> Tuple[Any, InitSummary]:
  """Fresh host parameters with every configured checkpoint applied (each must fit the model)."""
  config = exp.config
  params = jax.tree.map(np.asarray, jax.device_get(exp.init_params(rng)))
  report: Dict[str, str] = {}
  skipped: List[str] = []
  init = config.init_from
  if init.checkpoint_path:
    source = load_checkpoint(init.checkpoint_path, init.checkpoint_format,
                             num_heads=config.model.num_heads, field="init_from")
    params, report, skipped = init_lib.initialise_with_report(params, source, config)
  params = _with_experts(params, config, report)
  return params, InitSummary("checkpoints", "fresh model, then the configured checkpoints",
                             configured_sources(config) + teacher_sources(config),
                             _module_counts(params, report), skipped)


def state_from_params(exp: Experiment, params: Any) -> TrainState:
  """A step-0 train state holding `params` (host arrays), laid out on the experiment's mesh."""
  shardings = exp.state_shardings()
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(exp.optimizer.init, out_shardings=shardings.opt_state)(params)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
                    params=params, opt_state=opt_state)


def initial_state(exp: Experiment, ckpt: checkpoint.Checkpointer,
                  rng: jax.Array) -> Tuple[TrainState, InitSummary]:
  """The run's first state (see the module doc) and the summary of where it came from."""
  if ckpt.latest_step() is not None:
    # The newest step that reads and verifies; damaged ones are skipped with a warning.
    state = ckpt.restore(exp.abstract_state())
    ckpt.set_aside_damaged()
    detail = f"step {ckpt.restored_step} in {ckpt.directory}"
    if configured_sources(exp.config):
      detail += "; the configured init_from checkpoints are not read when resuming"
    return state, InitSummary("resume", detail, teacher_sources(exp.config))
  if not configured_sources(exp.config):
    state = exp.init_state(rng)
    return state, InitSummary("scratch", f"random initialisation, seed {exp.config.seed}",
                              teacher_sources(exp.config), _module_counts(state.params, {}))
  params, summary = initial_params(exp, rng)
  return state_from_params(exp, params), summary


def write_summary(workdir: str, summary: InitSummary) -> str:
  """Writes `summary` to `<workdir>/init_summary.json`; returns the path."""
  return checkpoint.write_file(workdir, SUMMARY_FILE, json.dumps(summary.to_json(), indent=2))

