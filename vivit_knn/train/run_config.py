"""The config a run was trained with: stored in its workdir, reused by eval, infer and resume.

Training writes the resolved config to `<workdir>/config.json` when a fresh run
starts. Later commands on that workdir (`--mode=eval`, `--mode=infer`, a resumed
training, the tools) start from the stored config and apply only the
`--config.<field>=<value>` overrides of their own command line on top, so the
training overrides need not be typed again. An override that would change the
parameter shapes, the optimiser state's layout or the data layout of the trained
run is refused in one line naming each such field with both values. The fault
injections of `PER_COMMAND_FIELDS` always come from the command line.

`config.json` holds the config as plain JSON under `config`, plus the dotted
paths of the values that were tuples (JSON has only lists), so the config loads
back exactly (tuples, None, and floats vs ints are kept).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from vivit_knn import config as config_lib
from vivit_knn.models.registry import build_model
from vivit_knn.train import optim
from vivit_knn.train.checkpoint import has_checkpoints, resolve
from vivit_knn.train.model_cost import clip_shape

ConfigDict = ml_collections.ConfigDict
RUN_CONFIG = "config.json"
FORMAT_VERSION = 1
_MISSING = object()
# The fields that decide one input clip's shape and the label space.
LAYOUT_FIELDS = ("dataset.name", "dataset.num_frames", "dataset.image_size",
                 "dataset.num_classes", "dataset.class_names_file")
# Fault injections for tests act on one command only: always taken from the command line.
PER_COMMAND_FIELDS = ("train.debug_kill_after_step", "train.debug_nan_loss_at_step")
# Optimizer settings a resume may change: they shape neither the parameters nor the
# optimizer state (clipping off is an identity step with the same empty state).
RESUMABLE_OPTIMIZER_FIELDS = ("optimizer.base_learning_rate", "optimizer.end_learning_rate",
                              "optimizer.warmup_steps", "optimizer.warmup_epochs",
                              "optimizer.grad_clip_norm")
# At most this many differing --config file fields are named in the note.
_MAX_LISTED = 12


def _encode(value: Any, path: str, tuples: List[str]) -> Any:
  """A JSON value for `value`; the paths of tuples are appended to `tuples`."""
  if isinstance(value, (ConfigDict, dict)):
    return {str(k): _encode(v, f"{path}.{k}" if path else str(k), tuples)
            for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    if isinstance(value, tuple):
      tuples.append(path)
    return [_encode(v, f"{path}[{i}]", tuples) for i, v in enumerate(value)]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
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


def config_to_json(config: ConfigDict) -> str:
  """The readable JSON text `save_run_config` writes for `config`.

  Args:
    config: a resolved experiment config.

  Returns:
    JSON text with `format_version`, `config` and `tuple_paths`.

  Raises:
    ValueError: naming the field whose value JSON cannot hold.
  """
  tuples: List[str] = []
  plain = _encode(config.to_dict(), "", tuples)
  return json.dumps({"format_version": FORMAT_VERSION, "config": plain,
                     "tuple_paths": tuples}, indent=2) + "\n"


def config_from_json(text: str, source: str = RUN_CONFIG) -> ConfigDict:
  """Loads the JSON text of `config_to_json` back into a locked ConfigDict.

  Args:
    text: the file's text.
    source: the file's name, for error messages.

  Returns:
    The config, equal to the one that was written.

  Raises:
    ValueError: the text is not a stored run config.
  """
  try:
    data = json.loads(text)
  except json.JSONDecodeError as err:
    raise ValueError(f"{source} is not valid JSON ({err.msg}, line {err.lineno}); it should "
                     "hold the run's config as training wrote it") from None
  if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
    raise ValueError(f"{source} holds no 'config' object: not a run config written by training")
  if data.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{source} has format_version {data.get('format_version')!r}; this "
                     f"version reads {FORMAT_VERSION}")
  config = ConfigDict(_decode(data["config"], "", set(data.get("tuple_paths", ()))))
  config.lock()
  return config


def save_run_config(workdir: str, config: ConfigDict) -> str:
  """Writes `config` to `<workdir>/config.json` (process 0 only; atomically).

  Args:
    workdir: the run's directory (local or remote).
    config: the resolved config the run trains with.

  Returns:
    The path of the file (also on processes that do not write it).
  """
  path = resolve(workdir) / RUN_CONFIG
  text = config_to_json(config)
  if jax.process_index() != 0:
    return str(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{RUN_CONFIG}.tmp-{os.getpid()}"
  tmp.write_text(text)
  tmp.replace(path)
  return str(path)


def load_run_config(workdir: str) -> Optional[ConfigDict]:
  """The config stored in `<workdir>/config.json`, or None when the workdir has none.

  Args:
    workdir: a run's directory.

  Returns:
    The stored config (locked), or None.

  Raises:
    ValueError: the file exists but is not a run config.
  """
  path = resolve(workdir) / RUN_CONFIG
  if not path.exists():
    return None
  return config_from_json(path.read_text(), str(path))


def override_paths(argv: Sequence[str], flag_name: str = "config") -> List[str]:
  """The dotted config fields that `--<flag_name>.<field>` entries of `argv` set, in order.

  Handles `--config.a.b=v`, `--config.a.b v` and the boolean `--noconfig.a.b`.

  Args:
    argv: the command line (e.g. `sys.argv`).
    flag_name: the config flag's name.

  Returns:
    The fields, each once.
  """
  pattern = re.compile(rf"^--?(?:no)?{re.escape(flag_name)}\.([^=\s]+)")
  paths: List[str] = []
  for arg in argv:
    if arg == "--":
      break
    match = pattern.match(arg)
    if match and match.group(1) not in paths:
      paths.append(match.group(1))
  return paths


def _get(config: Any, path: str) -> Any:
  node = config
  for part in path.split("."):
    if not isinstance(node, (ConfigDict, dict)) or part not in node:
      return _MISSING
    node = node[part]
  return node


def _set(config: ConfigDict, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def _flatten(config: Any, prefix: str = "") -> Dict[str, Any]:
  out: Dict[str, Any] = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ConfigDict, dict)):
      out.update(_flatten(value, path + "."))
    else:
      out[path] = value
  return out


def _show(value: Any) -> str:
  return "(absent)" if value is _MISSING else repr(value)


def _layout(config: ConfigDict) -> Dict[str, Any]:
  return {f: _get(config, f) for f in LAYOUT_FIELDS}


def _num_classes(config: ConfigDict, workdir: str) -> int:
  """The trained run's class count: its run_info.json, else the config, else a stand-in."""
  info = resolve(workdir) / "run_info.json"
  if info.exists():
    try:
      return len(json.loads(info.read_text())["class_names"])
    except (ValueError, KeyError, TypeError):
      pass
  n = _get(config, "dataset.num_classes")
  return int(n) if isinstance(n, int) and n > 0 else 2


def _signature(tree: Any) -> Any:
  """Each leaf's (shape, dtype): what a checkpoint restore must match."""
  return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)


def _abstract_params(config: ConfigDict, num_classes: int, shape: Tuple[int, ...]) -> Any:
  config_lib.check_model(config.model, shape)
  model = build_model(config.model, num_classes)
  init = lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1,) + shape, jnp.float32),
                            train=False)["params"]
  return jax.eval_shape(init)


def _opt_state_signature(config: ConfigDict, params: Any) -> Any:
  # The schedule does not shape the state: a neutral one keeps its checks out of the way.
  cfg = config.optimizer.to_dict()
  cfg["warmup_steps"], cfg["warmup_epochs"] = 0, -1.0
  tx, _ = optim.build_optimizer(cfg, 1)
  return _signature(jax.eval_shape(tx.init, params))


def _copy(config: ConfigDict) -> ConfigDict:
  return ConfigDict(config.to_dict())


def _with(config: ConfigDict, field: str, value: Any) -> ConfigDict:
  copy = _copy(config)
  _set(copy, field, value)
  return copy


def _add_missing(dst: ConfigDict, src: ConfigDict, prefix: str, skip: str) -> None:
  for key, value in src.items():
    path = f"{prefix}{key}"
    if path == skip:
      continue
    if key not in dst:
      dst[key] = value.to_dict() if isinstance(value, ConfigDict) else value
    elif isinstance(value, ConfigDict) and isinstance(dst[key], ConfigDict):
      _add_missing(dst[key], value, path + ".", skip)


def _with_new_keys(stored: ConfigDict, flag_config: ConfigDict) -> ConfigDict:
  """`stored` plus the keys the schema gained since it was written, at the file's values."""
  filled = _copy(stored)
  same_dataset = _get(stored, "dataset.name") == _get(flag_config, "dataset.name")
  _add_missing(filled, flag_config, "", "" if same_dataset else "dataset")
  filled.lock()
  return filled


def _refused(stored: ConfigDict, merged: ConfigDict, changed: Dict[str, Tuple[Any, Any]],
             workdir: str) -> List[str]:
  """The changed fields that would alter the trained run's shapes or data layout."""
  bad: List[str] = []
  layout_changes = [f for f in changed if f in LAYOUT_FIELDS]
  if _layout(stored) != _layout(merged):
    bad += [f"{f}: {_show(changed[f][0])} -> {_show(changed[f][1])} (data layout)"
            for f in layout_changes]
  model_changes = [f for f in changed if f.startswith("model.")]
  opt_changes = [f for f in changed if f.startswith("optimizer.")
                 and f not in RESUMABLE_OPTIMIZER_FIELDS]
  if not (model_changes or opt_changes):
    return bad
  # Shapes are compared on the trained clip shape, so that only the model's own fields count.
  n, shape = _num_classes(stored, workdir), tuple(int(v) for v in clip_shape(stored))
  params = _abstract_params(stored, n, shape)
  trained = _signature(params)
  if model_changes and _signature(_abstract_params(merged, n, shape)) != trained:
    alone = [f for f in model_changes
             if _signature(_abstract_params(_with(stored, f, changed[f][1]), n, shape)) != trained]
    bad += [f"{f}: {_show(changed[f][0])} -> {_show(changed[f][1])} (parameter shapes)"
            for f in alone or model_changes]
  elif opt_changes:
    state = _opt_state_signature(stored, params)
    bad += [f"{f}: {_show(changed[f][0])} -> {_show(changed[f][1])} (optimizer state)"
            for f in opt_changes
            if _opt_state_signature(_with(stored, f, changed[f][1]), params) != state]
  return bad


def _note_file_differences(flag_config: ConfigDict, stored: ConfigDict, overridden: Sequence[str],
                           path: str) -> None:
  """Says once which values of the --config file the stored config replaces."""
  given, kept = _flatten(flag_config), _flatten(stored)
  differ = [f for f in sorted(set(given) | set(kept))
            if f not in overridden and given.get(f, _MISSING) != kept.get(f, _MISSING)]
  if not differ or jax.process_index() != 0:
    return
  listed = "; ".join(f"{f} (file: {_show(given.get(f, _MISSING))}, stored: "
                     f"{_show(kept.get(f, _MISSING))})" for f in differ[:_MAX_LISTED])
  more = f"; and {len(differ) - _MAX_LISTED} more" if len(differ) > _MAX_LISTED else ""
  print(f"using the run's stored config {path}; {len(differ)} value(s) of the --config file "
        f"are not used: {listed}{more}. Pass --config.<field>=<value> to override one.",
        flush=True)


def _refuse_missing(workdir: str, use_config_file: Optional[bool]) -> None:
  """Refuses a workdir with checkpoints but no stored config, unless told to use the file."""
  if use_config_file or not has_checkpoints(workdir):
    return
  how = ("add --use_config_file to use it" if use_config_file is not None else
         "run `python -m vivit_knn.main` on it once with --use_config_file to store it")
  raise ValueError(f"--workdir={workdir} has checkpoints but no {RUN_CONFIG}, so the config "
                   f"they were trained with is unknown; if the --config file is that config, "
                   f"{how}")


def resolve_run_config(flag_config: ConfigDict, workdir: str, argv: Sequence[str],
                       flag_name: str = "config",
                       use_config_file: Optional[bool] = None) -> ConfigDict:
  """The config for a command on `workdir`: its stored config plus this command's overrides.

  Args:
    flag_config: the config the command line built (config file plus overrides).
    workdir: the run's directory.
    argv: the command line; its `--<flag_name>.<field>` entries are the overrides,
      whose parsed values are read from `flag_config`.
    flag_name: the config flag's name.
    use_config_file: whether the command line accepted the `--config` file for a
      workdir with checkpoints but no stored config (None: the command has no
      such flag).

  Returns:
    `flag_config` when the workdir stores no config (and has no checkpoints, or
    `use_config_file`); else the stored config with
    the overrides applied (locked).

  Raises:
    ValueError: one line, when an override changes the trained run's parameter
      shapes, optimiser state or data layout (each field with its stored and
      given value), or names a field the stored config lacks; or when the
      workdir has checkpoints but no stored config.
  """
  stored = load_run_config(workdir)
  if stored is None:
    _refuse_missing(workdir, use_config_file)
    return flag_config
  path = str(resolve(workdir) / RUN_CONFIG)
  overridden = override_paths(argv, flag_name)
  stored = _with_new_keys(stored, flag_config)
  for field in PER_COMMAND_FIELDS:
    if _get(flag_config, field) is not _MISSING and _get(stored, field) is not _MISSING:
      stored = _with(stored, field, _get(flag_config, field))
  merged = _copy(stored)
  changed: Dict[str, Tuple[Any, Any]] = {}
  for field in overridden:
    given, old = _get(flag_config, field), _get(stored, field)
    if given is _MISSING:
      continue  # e.g. an index into a tuple; ml_collections has applied it to a parent field
    if old is _MISSING:
      raise ValueError(f"--{flag_name}.{field}: the run's stored config {path} has no field "
                       f"{field} (it was trained with dataset.name={stored.dataset.name!r})")
    if isinstance(given, ConfigDict):
      given = given.to_dict()
    if given != old:
      changed[field] = (old, given)
      _set(merged, field, given)
  bad = _refused(stored, merged, changed, workdir)
  if bad:
    raise ValueError(f"these overrides change the run trained in {workdir}: {'; '.join(bad)}. "
                     "Drop them, or train a new run in another --workdir")
  _note_file_differences(flag_config, stored, overridden, path)
  merged.lock()
  return merged
