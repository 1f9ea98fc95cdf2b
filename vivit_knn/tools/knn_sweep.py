r"""Re-evaluates a trained checkpoint with k-NN attention at other k, and measures top-k mass.

    python -m vivit_knn.tools.knn_sweep --config=configs/synthetic_dk.py \
        --workdir=runs/synthetic_dk --k=0.25,0.5,0.67,0.8,1.0
    python -m vivit_knn.tools.knn_sweep ... --fields=model.spatial_transformer.attention --k=4,8

Each k is the stored run config with the `--fields` attentions (default: all) set to
`kind='knn'`, `knn_k=k` (with a point: a fraction of the keys; else a count), evaluated
beside the rows `trained` and `dense` (the fields dense). With every attention dense
(whatever `--fields`) it measures per layer the share of a query's attention mass in its
k largest weights (mean over queries, heads, the first `--mass_examples` clips). Writes
`sweep.csv`, `sweep.json`, `mass.csv`, `sweep.png` to `<workdir>/knn_sweep/<name>/`
(`--name`, default: made of the fields and k values, so sweeps keep their own files).
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import os
import re
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
from absl import flags
from ml_collections import ConfigDict, config_flags

from vivit_knn import cli
from vivit_knn.tools import trained_run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.")
_K = flags.DEFINE_list("k", ["0.25", "0.5", "0.67", "0.8", "1.0"],
                       "k values: fractions in (0, 1] (with a point) or key counts.")
_FIELDS = flags.DEFINE_list("fields", ["all"], "Attention config fields to change, e.g. "
                            "model.spatial_transformer.attention, or 'all'.")
_MASS_EXAMPLES = flags.DEFINE_integer("mass_examples", 64, "Eval clips for the top-k "
                                      "attention-mass shares.", lower_bound=1)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Where sweeps go (default: <workdir>/knn_sweep).")
_NAME = flags.DEFINE_string("name", None, "This sweep's folder under --output_dir (default: "
                            "its fields and k values, e.g. all_k0.5-1.0).")

KValue = Union[int, float]


def parse_k(text: str) -> KValue:
  """'0.5' -> 0.5 (a fraction), '8' -> 8 (a count); ValueError naming `--k` otherwise."""
  text = text.strip()
  try:
    value = float(text) if any(c in text for c in ".eE") else int(text)
  except ValueError:
    raise ValueError(f"--k: {text!r} is not a number (fractions: 0.5; counts: 8)") from None
  if isinstance(value, float) and not 0.0 < value <= 1.0:
    raise ValueError(f"--k: the fraction {text} is outside (0, 1]; write counts without a point")
  if isinstance(value, int) and value < 1:
    raise ValueError(f"--k: the count {value} must be at least 1")
  return value


def attention_fields(config: ConfigDict, input_shape: Sequence[int],
                     wanted: Sequence[str]) -> Dict[str, int]:
  """`{attention config field: number of keys}` for `wanted` ('all' = every one the model uses)."""
  from vivit_knn.models.registry import attention_key_counts  # pylint: disable=g-import-not-at-top
  counts = {f: n for f, (n, _) in attention_key_counts(config.model, input_shape).items()}
  for field in sorted(set(wanted) - set(counts) - {"all"}):
    raise ValueError(f"--fields: {field!r} is not an attention of this model; it has "
                     f"{', '.join(counts)}")
  return counts if list(wanted) in ([], ["all"]) else {f: counts[f] for f in wanted}


def sweep_name(fields: Sequence[str], ks: Sequence[str]) -> str:
  """`<fields>_k<k values>`, e.g. 'spatial_transformer_k4-8', or 'all_k0.5-1.0'."""
  short = [f.replace("model.", "", 1).replace(".attention", "") for f in fields] or ["all"]
  return f"{'+'.join(short)}_k{'-'.join(k.strip() for k in ks)}"


def with_attention(config: ConfigDict, fields: Sequence[str], kind: str,
                   k: KValue = None) -> ConfigDict:
  """A copy of `config` with each field's `kind` (and `knn_k`, when given) replaced."""
  out = ConfigDict(config.to_dict())
  for field in fields:  # e.g. 'model.spatial_transformer.attention'
    block = functools.reduce(lambda parent, part: parent[part], field.split("."), out)
    block.update(kind=kind, **({} if k is None else {"knn_k": k}))
  return out


def _mass_curves(exp: Any, params: Any, num_examples: int) -> Dict[str, List[float]]:
  """`{layer: top-k mass curve}` under `exp`'s model over its first eval clips."""
  # pylint: disable=g-import-not-at-top
  import jax
  from vivit_knn.models import attention_record
  from vivit_knn.tools.attention_stats import topk_mass_curve

  @jax.jit
  def curves(params, clips):
    _, state = exp.model.apply({"params": params}, clips, train=False,
                               mutable=[attention_record.COLLECTION])
    layers = attention_record.attention_layers(state[attention_record.COLLECTION])
    return {name: topk_mass_curve(r["weights"]) for name, r in layers.items()}

  total: Dict[str, Any] = {}
  seen = 0
  for batch in exp.dataset.eval_batches(exp.config.eval.global_batch_size):
    clips = np.asarray(batch["inputs"])[np.asarray(batch["mask"]) > 0][:num_examples - seen]
    if not len(clips):
      break
    clips = clips.reshape((-1,) + clips.shape[-4:])  # views folded into the batch
    for name, curve in jax.device_get(curves(params, clips)).items():
      total[name] = total.get(name, 0.0) + np.asarray(curve, np.float64) * len(clips)
    seen += len(clips)  # the next batch's slice is empty once enough were seen
  return {name: (total[name] / seen).tolist()
          for name in attention_record.layer_order(total)}


def sweep(config: ConfigDict, workdir: str, ks: Sequence[KValue], fields: Sequence[str],
          mass_examples: int) -> Dict[str, Any]:
  """Evaluates the newest checkpoint of `workdir` at each k; returns rows and mass shares.

  Returns `{'rows': [{'name', 'k', 'top1', 'top5', 'loss'}], 'fields': {field: keys},
  'mass': {layer: {'num_keys', 'curve', 'share': {k label: share}}}}`.
  """
  # pylint: disable=g-import-not-at-top
  from vivit_knn.models.attention_backends import resolve_knn_k
  from vivit_knn.train import evaluation, experiment, run_info
  info = run_info.read_run_info(workdir)
  counts = attention_fields(config, info["input_shape"], fields)
  every = attention_fields(config, info["input_shape"], ["all"])
  for k, (field, n) in itertools.product(ks, counts.items()):
    try:
      resolve_knn_k(k, n)
    except ValueError as err:
      raise ValueError(f"--k={k} does not fit {field} ({n} keys): {err}") from None
  params, step = run_info.restore_params(workdir)
  variants: List[Tuple[str, KValue, ConfigDict]] = [("trained", None, config)]
  variants += [(f"knn k={k}", k, with_attention(config, counts, "knn", k)) for k in ks]
  variants.append(("dense", None, with_attention(config, counts, "dense")))
  rows = []
  for name, k, cfg in variants:
    result = evaluation.run_eval(experiment.build_experiment(cfg, training=False), params)
    rows.append({"name": name, "k": k, **{m: float(result[m]) for m in ("top1", "top5", "loss")}})
    print(f"{name:>14}  top1={rows[-1]['top1']:.4f}  top5={rows[-1]['top5']:.4f}", flush=True)
  dense = experiment.build_experiment(with_attention(config, every, "dense"), training=False)
  mass = {}
  for layer, curve in _mass_curves(dense, params, mass_examples).items():
    n = len(curve)  # a count larger than this layer's keys has no share
    share = {str(k): curve[resolve_knn_k(k, n) - 1] if isinstance(k, float) or k <= n else None
             for k in ks}
    mass[layer] = {"num_keys": n, "curve": curve, "share": share}
  return {"step": step, "fields": counts, "k": [str(k) for k in ks], "rows": rows,
          "mass": mass}


def write_outputs(result: Dict[str, Any], out_dir: str) -> Dict[str, str]:
  """Writes the sweep table (CSV, JSON), the mass table (CSV) and the plot; returns the paths."""
  from vivit_knn.tools import attention_plots  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  paths = {n: os.path.join(out_dir, n) for n in "sweep.csv sweep.json mass.csv sweep.png".split()}
  with open(paths["sweep.csv"], "w", newline="") as f:
    csv.writer(f).writerows([["name", "k", "top1", "top5", "loss"]] +
                            [list(r.values()) for r in result["rows"]])
  with open(paths["sweep.json"], "w") as f:
    json.dump(result, f, indent=2)
  with open(paths["mass.csv"], "w", newline="") as f:
    csv.writer(f).writerows([["layer", "num_keys"] + [f"k={k}" for k in result["k"]]] + [
        [layer, m["num_keys"]] + ["" if s is None else f"{s:.4f}" for s in m["share"].values()]
        for layer, m in result["mass"].items()])
  attention_plots.plot_sweep(result, paths["sweep.png"])
  return paths


def main(argv: Sequence[str]) -> int:
  """Runs the sweep and lists the files written."""
  del argv  # `cli.run` refuses stray arguments
  config = trained_run_config(_CONFIG.value, _WORKDIR.value)
  ks = [parse_k(k) for k in _K.value]
  if not ks:
    raise ValueError("--k needs at least one value")
  name = _NAME.value or sweep_name([f for f in _FIELDS.value if f != "all"], _K.value)
  if not re.fullmatch(r"[\w.+=-]+", name):
    raise ValueError(f"--name={name!r}: use letters, digits and . _ + = - only")
  result = sweep(config, _WORKDIR.value, ks, _FIELDS.value, _MASS_EXAMPLES.value)
  print("top-k attention-mass share with every attention dense (per layer):")
  for layer, m in result["mass"].items():
    print(f"  {layer} ({m['num_keys']} keys)  " + "  ".join(
        f"k={k}:{'-' if s is None else f'{s:.3f}'}" for k, s in m["share"].items()))
  out_dir = _OUTPUT_DIR.value or os.path.join(_WORKDIR.value, "knn_sweep")
  paths = write_outputs(result, os.path.join(out_dir, name))
  print("wrote:\n" + "\n".join(f"  {path}" for path in paths.values()))
  return 0


if __name__ == "__main__":
  cli.run(main)
