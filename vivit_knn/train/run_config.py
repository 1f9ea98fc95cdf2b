"""The config a run was trained with: `<workdir>/config.json`, reused by eval, infer and resume.

Later commands on the workdir start from the stored config; their `--config.<field>` overrides
apply where `ALLOWED_OVERRIDES` lists the field, any other that differs from the stored value
is refused in one line. The file is plain JSON plus the dotted paths of the values that were
tuples, so that it loads back exactly (tuples, None, floats vs ints).
"""

from __future__ import annotations

import fnmatch
import functools
import json
from typing import Any, Dict, Iterable, List, Optional

import jax
import ml_collections
from absl import flags
from flax.traverse_util import flatten_dict
from ml_collections import config_flags

from vivit_knn.train.checkpoint import has_checkpoints, resolve, write_file

ConfigDict = ml_collections.ConfigDict
RUN_CONFIG = "config.json"
FORMAT_VERSION = 1
_ABSENT = object()
# Optimizer settings a resume may change (e.g. with --restart_from_step after a non-finite
# stop): they shape neither the parameters nor the optimizer state.
RESUMABLE_OPTIMIZER_FIELDS = ("optimizer.base_learning_rate", "optimizer.end_learning_rate",
                              "optimizer.warmup_steps", "optimizer.warmup_epochs",
                              "optimizer.grad_clip_norm")
# Fields (fnmatch patterns) a command on a trained run may set to new values: none changes the
# shapes of the trained state, what a training step reads or the labels. Not
# train.global_batch_size: the train stream's epochs and an epoch-based schedule follow it.
ALLOWED_OVERRIDES = (
    "dataset.num_test_clips", "dataset.num_test_crops", "eval.*",
    "model.*knn_k", "model.*.impl",  # every attention path computes the same function
    "dataset.data_dir", "dataset.splits_dir", "dataset.manual_dir",
    "init_from.*",  # read only while the workdir holds no checkpoint
    "distill.stage1.checkpoint_path", "distill.stage2.*",
    "train.num_train_steps", "train.num_epochs", "train.checkpoint_every_steps",
    "train.keep_checkpoints", "train.log_every_steps", "train.eval_at_end",
    "train.grad_accum_steps",  # the same update in smaller pieces
    "mesh.*",  # this machine's devices: a checkpoint restores onto any mesh
) + RESUMABLE_OPTIMIZER_FIELDS
UNUSED_FILE = "config_not_used.txt"


def _tuple_paths(value: Any, path: str) -> List[str]:
  """The dotted paths of the tuples in `value`; ValueError for a value JSON cannot hold."""
  if isinstance(value, dict):
    return [p for k, v in value.items() for p in _tuple_paths(v, f"{path}.{k}" if path else k)]
  if isinstance(value, (tuple, list)):
    inner = [p for i, v in enumerate(value) for p in _tuple_paths(v, f"{path}[{i}]")]
    return [path] + inner if isinstance(value, tuple) else inner
  if value is None or isinstance(value, (bool, int, float, str)):
    return []
  raise ValueError(f"config field {path} holds a {type(value).__name__} ({value!r}), which "
                   "cannot be stored in the run's config.json; use a number, string, bool, "
                   "None, tuple or list")


def _decode(value: Any, path: str, tuples: set) -> Any:
  if isinstance(value, dict):
    return {k: _decode(v, f"{path}.{k}" if path else k, tuples) for k, v in value.items()}
  if isinstance(value, list):
    items = [_decode(v, f"{path}[{i}]", tuples) for i, v in enumerate(value)]
    return tuple(items) if path in tuples else items
  return value


def save_run_config(workdir: str, config: ConfigDict) -> str:
  """Writes `<workdir>/config.json` (process 0); ValueError names a value JSON cannot hold."""
  tree = config.to_dict()
  text = json.dumps({"format_version": FORMAT_VERSION, "config": tree,
                     "tuple_paths": _tuple_paths(tree, "")}, indent=2) + "\n"
  if jax.process_index() == 0:
    return write_file(workdir, RUN_CONFIG, text)
  return str(resolve(workdir) / RUN_CONFIG)


def load_run_config(workdir: str) -> Optional[ConfigDict]:
  """The config in `<workdir>/config.json` (locked), None without one; ValueError if foreign."""
  path = resolve(workdir) / RUN_CONFIG
  if not path.exists():
    return None
  try:
    data = json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}); it should "
                     "hold the run's config as training wrote it") from None
  if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
    raise ValueError(f"{path} holds no 'config' object: not a run config written by training")
  if data.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path} has format_version {data.get('format_version')!r}; this "
                     f"version reads {FORMAT_VERSION}")
  config = ConfigDict(_decode(data["config"], "", set(data.get("tuple_paths", ()))))
  config.lock()
  return config


def _on_schema(stored: Dict[str, Any], schema: Dict[str, Any]) -> Dict[str, Any]:
  # Keys added since the run was stored take the schema's values, removed ones go: an older
  # run's config.json still loads.
  return {k: _on_schema(stored[k], v) if isinstance(v, dict) and isinstance(stored.get(k), dict)
          else stored.get(k, v) for k, v in schema.items()}


def _note_differences(notes_dir: str, path: str, given: Dict[str, Any], old: Dict[str, Any],
                      fields: List[str], changed: List[str]) -> None:
  """Prints one short line on the stored config in use and one on a changed schedule.

  The --config file values the stored ones override are listed in `notes_dir/UNUSED_FILE`.
  """
  schedule = [f for f in changed if f.startswith(("train.num_", "optimizer."))]
  if schedule:
    print("the learning-rate schedule changes with "
          + ", ".join(f"{f} ({old[f]!r} -> {given[f]!r})" for f in schedule), flush=True)
  show = lambda tree, f: repr(tree[f]) if f in tree else "(absent)"
  unused = [f"{f}: file {show(given, f)}, stored {show(old, f)}"
            for f in sorted(set(given) | set(old))
            if f not in fields and given.get(f, _ABSENT) != old.get(f, _ABSENT)]
  if not unused:
    return
  try:
    where = "see " + write_file(notes_dir, UNUSED_FILE, "\n".join(unused) + "\n")
  except OSError:  # a read-only run folder read by infer or a tool (no --output_dir)
    where = "--config.<field> overrides what a trained run allows"
  print(f"using the run's stored config {path}: {len(unused)} value(s) of the --config file "
        f"differ and are not used ({where})", flush=True)


def resolve_run_config(flag_config: ConfigDict, workdir: str, *,
                       use_config_file: Optional[bool] = None,
                       overridden: Optional[Iterable[str]] = None,
                       training: bool = False, notes_dir: Optional[str] = None) -> ConfigDict:
  """The config for a command on `workdir`: its stored config plus this command's overrides.

  The --config file values not used are listed in `notes_dir` (default: `workdir`; an eval
  with --output_dir writes there only).
  `overridden`: the fields the command line set (default: the parsed `--config.<field>` flags).
  `training`: a resume, told when its learning-rate schedule changes.
  `use_config_file`: whether the command accepts the `--config` file for a workdir with
  checkpoints but no stored config (None: it has no such flag), which gives `flag_config`.
  Overrides outside `ALLOWED_OVERRIDES` that change stored values are refused.
  """
  stored = load_run_config(workdir)
  if stored is None:
    if use_config_file or not has_checkpoints(workdir):
      return flag_config
    how = ("add --use_config_file to use it" if use_config_file is not None else
           "run `python -m vivit_knn.main` on it once with --use_config_file to store it")
    raise ValueError(f"--workdir={workdir} has checkpoints but no {RUN_CONFIG}, so the config "
                     f"they were trained with is unknown; if the --config file is that config, "
                     f"{how}")
  if overridden is None:
    overridden = config_flags.get_override_values(flags.FLAGS["config"])
  path = str(resolve(workdir) / RUN_CONFIG)
  schema = flag_config.to_dict()
  if stored.dataset.name != schema["dataset"].get("name"):
    schema["dataset"] = stored.dataset.to_dict()  # another dataset's fields: kept as stored
  kept = _on_schema(stored.to_dict(), schema)
  given, old = flatten_dict(flag_config.to_dict(), sep="."), flatten_dict(kept, sep=".")
  # In command-line order; an override may set a whole block.
  fields = list(dict.fromkeys(f for o in overridden for f in given
                              if f == o or f.startswith(o + ".")))
  for f in fields:
    if f not in old:
      raise ValueError(f"--config.{f}: the run's stored config {path} has no field {f} "
                       f"(it was trained with dataset.name={stored.dataset.name!r})")
  changed = [f for f in fields if given[f] != old[f]]
  refused = [f for f in changed if not any(fnmatch.fnmatchcase(f, p) for p in ALLOWED_OVERRIDES)]
  if refused:
    listed = "; ".join(f"{f}: {old[f]!r} -> {given[f]!r}" for f in refused)
    raise ValueError(f"these overrides change the run trained in {workdir}: {listed}. Drop "
                     "them, or train a new run in another --workdir (a trained run takes "
                     f"overrides of {', '.join(ALLOWED_OVERRIDES)} only)")
  for f in changed:
    *parents, leaf = f.split(".")
    functools.reduce(dict.__getitem__, parents, kept)[leaf] = given[f]
  if jax.process_index() == 0:
    _note_differences(notes_dir or workdir, path, given, old, fields,
                      changed if training else [])
  merged = ConfigDict(kept)
  merged.lock()
  return merged
