"""The experiment config schema: defaults for every key, and checks run before compiling.

Every `configs/*.py` starts from `base_config()` and overrides what it needs.
`validate()` rejects keys the schema does not know (with a suggestion for
misspellings) and shape combinations that cannot work, naming the field.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Optional, Sequence

import ml_collections

from vivit_knn.data.registry import DATASET_DEFAULTS
from vivit_knn.models import registry as model_registry
from vivit_knn.models.vivit import CLASSIFIERS, KERNEL_INIT_METHODS, MODEL_TYPES
from vivit_knn.train import optim
from vivit_knn.weights import formats

ConfigDict = ml_collections.ConfigDict


def attention_config(kind: str = "dense", knn_k: float = 2 / 3) -> ConfigDict:
  """An attention block config: `kind` ('dense' | 'knn') and `knn_k` (fraction <= 1, or a count)."""
  return ConfigDict({"kind": kind, "knn_k": float(knn_k)})


def model_config() -> ConfigDict:
  """Default `config.model`: ViViT-B/16x2 factorised encoder with dense attention.

  `name` picks the family ('vivit', 'timesformer', 'xvit'). `model_type`,
  `spatial_transformer` and `temporal_transformer` are ViViT's; `attention_type`
  ('' = the family default), `temporal_attention` (TimeSformer's divided time
  attention, X-ViT's head), `xvit_div`, `num_summary_tokens` and `head_layers`
  are TimeSformer's / X-ViT's.
  """
  return ConfigDict({
      "name": "vivit",
      "model_type": "factorized_encoder",
      "hidden_size": 768,
      "patch_size": (16, 16, 2),
      "num_heads": 12,
      "mlp_dim": 3072,
      "num_layers": 12,
      "attention": attention_config(),
      "spatial_transformer": {"num_layers": 12, "attention": attention_config()},
      "temporal_transformer": {"num_layers": 4, "attention": attention_config()},
      "classifier": "token",
      "dropout_rate": 0.0,
      "attention_dropout_rate": 0.0,
      "stochastic_depth": 0.0,
      "kernel_init_method": "",
      "remat": False,
      "dtype": "float32",
      "attention_type": "",
      "temporal_attention": attention_config(),
      "xvit_div": 8,
      "num_summary_tokens": 0,
      "head_layers": 1,
  })


def init_from_config() -> ConfigDict:
  """Default `config.init_from` (scenic's names): where fresh parameters are initialised from.

  `checkpoint_path` '' means off. `checkpoint_format`: 'orbax' (a tree in our
  naming, e.g. written by `python -m vivit_knn.weights.convert`), 'vit_npz',
  'big_vision_npz' or 'timm'. See `vivit_knn.weights.init_from`.
  """
  return ConfigDict({
      "checkpoint_path": "",
      "checkpoint_format": "orbax",
      "restore_positional_embedding": True,
      "positional_embed_size_change": "tile",
      "kernel_init_method": "central_frame_initializer",
  })


def base_config() -> ConfigDict:
  """The full schema with defaults. Configs override values; they may not add keys."""
  return ConfigDict({
      "experiment_name": "experiment",
      "seed": 0,
      "dataset": DATASET_DEFAULTS["synthetic"](),
      "model": model_config(),
      "init_from": init_from_config(),
      "optimizer": optim.default_config(),
      "loss": {"label_smoothing": 0.0, "mixup_alpha": 0.0},
      "train": {
          "global_batch_size": 32,
          # Either a step count, or (when num_train_steps <= 0) epochs of the train split.
          "num_train_steps": 0,
          "num_epochs": 30.0,
          "log_every_steps": 50,
          "checkpoint_every_steps": 500,
          "keep_checkpoints": 3,
          "eval_at_end": True,
          # Fault injection for resume tests: hard-kill the process after this step (0 = off).
          "debug_kill_after_step": 0,
      },
      "eval": {"global_batch_size": 32, "confusion_matrix": True},
      "mesh": {"data": -1, "fsdp": 1, "fsdp_min_param_size": 2**18},
  })


def _unknown_keys(cfg: ConfigDict, schema: ConfigDict, prefix: str) -> Iterable[str]:
  for key in cfg.keys():
    path = f"{prefix}{key}"
    if key not in schema:
      hint = difflib.get_close_matches(key, list(schema.keys()), n=1)
      yield path + (f" (did you mean '{prefix}{hint[0]}'?)" if hint else "")
    elif isinstance(schema[key], ConfigDict):
      if not isinstance(cfg[key], ConfigDict):
        yield f"{path} (must be a config block, got {type(cfg[key]).__name__})"
      elif key != "dataset" or prefix:
        yield from _unknown_keys(cfg[key], schema[key], path + ".")


def check_keys(config: ConfigDict) -> None:
  """Raises ValueError listing every key that the schema (or its dataset's schema) lacks."""
  schema = base_config()
  bad = list(_unknown_keys(config, schema, ""))
  name = config.get("dataset", {}).get("name") if isinstance(config.get("dataset"), ConfigDict) else None
  if name not in DATASET_DEFAULTS:
    raise ValueError(f"dataset.name={name!r} is unknown; known: {sorted(DATASET_DEFAULTS)}")
  bad += list(_unknown_keys(config.dataset, DATASET_DEFAULTS[name](), "dataset."))
  if bad:
    raise ValueError("Unknown config keys: " + "; ".join(bad))


def _require(cond: bool, field: str, message: str) -> None:
  if not cond:
    raise ValueError(f"{field}: {message}")


def _check_vivit(cfg: ConfigDict, field: str) -> None:
  _require(cfg.model_type in MODEL_TYPES, f"{field}.model_type",
           f"must be one of {MODEL_TYPES}, got {cfg.model_type!r}")
  _require(cfg.classifier in CLASSIFIERS, f"{field}.classifier",
           f"must be one of {CLASSIFIERS}, got {cfg.classifier!r}")
  if cfg.model_type in ("factorized_self_attention_block", "factorized_dot_product_attention"):
    _require(cfg.classifier == "gap", f"{field}.classifier",
             f"must be 'gap' for model_type {cfg.model_type!r} (no CLS token there)")
  if cfg.model_type == "factorized_dot_product_attention":
    _require(cfg.num_heads % 2 == 0, f"{field}.num_heads",
             f"must be even for model 4 (half the heads per axis), got {cfg.num_heads}")


def _check_spacetime(cfg: ConfigDict, field: str) -> None:
  """TimeSformer / X-ViT keys."""
  allowed = model_registry.ATTENTION_TYPES[cfg.name]
  _require(cfg.attention_type in ("",) + allowed, f"{field}.attention_type",
           f"must be one of {allowed} (or empty for "
           f"{model_registry.DEFAULT_ATTENTION_TYPE[cfg.name]!r}) for {cfg.name}, "
           f"got {cfg.attention_type!r}")
  _require(cfg.classifier == "token", f"{field}.classifier",
           f"must be 'token' for {cfg.name} (it classifies from its CLS), got {cfg.classifier!r}")
  if cfg.name != "xvit":
    return
  div = cfg.xvit_div
  _require(isinstance(div, int) and div >= 2, f"{field}.xvit_div",
           f"must be an int >= 2 (2C/div shifted channels must fit in C), got {div!r}")
  _require(cfg.hidden_size % div == 0, f"{field}.xvit_div",
           f"{div} does not divide the {cfg.hidden_size} key/value channels (heads x head_dim)")
  _require(cfg.num_summary_tokens >= 0, f"{field}.num_summary_tokens",
           f"must be >= 0, got {cfg.num_summary_tokens}")
  _require(cfg.head_layers >= 1, f"{field}.head_layers",
           f"must be >= 1 (the temporal-attention head), got {cfg.head_layers}")


def check_model(cfg: ConfigDict, input_shape: Sequence[int], field: str = "model") -> None:
  """Checks model hyper-parameters against one clip's `(T, H, W, C)`; errors name the field."""
  _require(cfg.name in model_registry.MODEL_NAMES, f"{field}.name",
           f"must be one of {model_registry.MODEL_NAMES}, got {cfg.name!r}")
  if cfg.name == "vivit":
    _check_vivit(cfg, field)
  else:
    _check_spacetime(cfg, field)
  _require((cfg.kernel_init_method or None) in KERNEL_INIT_METHODS, f"{field}.kernel_init_method",
           f"must be one of {KERNEL_INIT_METHODS[1:]} or empty, got {cfg.kernel_init_method!r}")
  _require(len(cfg.patch_size) == 3, f"{field}.patch_size",
           f"must be (h, w, t), got {tuple(cfg.patch_size)}")
  _require(cfg.hidden_size % cfg.num_heads == 0, f"{field}.num_heads",
           f"{cfg.num_heads} heads do not divide hidden_size={cfg.hidden_size}")
  for name in ("dropout_rate", "attention_dropout_rate", "stochastic_depth"):
    _require(0.0 <= cfg[name] < 1.0, f"{field}.{name}", f"must be in [0, 1), got {cfg[name]}")
  t_in, h_in, w_in, _ = input_shape
  ph, pw, pt = cfg.patch_size
  _require(pt >= 1 and t_in % pt == 0, f"{field}.patch_size",
           f"num_frames={t_in} is not divisible by the tubelet time size t={pt} (dataset.num_frames)")
  _require(ph >= 1 and h_in % ph == 0, f"{field}.patch_size",
           f"image height {h_in} is not divisible by the patch height {ph}")
  _require(pw >= 1 and w_in % pw == 0, f"{field}.patch_size",
           f"image width {w_in} is not divisible by the patch width {pw}")
  model_registry.check_knn_k(cfg, input_shape)


def check_init_from(cfg: ConfigDict, field: str = "init_from") -> None:
  """Checks the `init_from` choices (the checkpoint itself is read only when training starts)."""
  _require(cfg.checkpoint_format in formats.CHECKPOINT_FORMATS, f"{field}.checkpoint_format",
           f"must be one of {formats.CHECKPOINT_FORMATS}, got {cfg.checkpoint_format!r}")
  _require(cfg.positional_embed_size_change in formats.POSEMB_SIZE_CHANGES,
           f"{field}.positional_embed_size_change",
           f"must be one of {formats.POSEMB_SIZE_CHANGES}, got "
           f"{cfg.positional_embed_size_change!r}")
  _require(cfg.kernel_init_method in formats.KERNEL_INIT_METHODS, f"{field}.kernel_init_method",
           f"must be one of {formats.KERNEL_INIT_METHODS}, got {cfg.kernel_init_method!r}")


def check_training(config: ConfigDict, num_devices: int, process_count: int = 1) -> None:
  """Checks batch sizes and loop settings against the device count."""
  tr = config.train
  _require(tr.global_batch_size >= 1, "train.global_batch_size", "must be >= 1")
  _require(tr.global_batch_size % num_devices == 0, "train.global_batch_size",
           f"{tr.global_batch_size} is not divisible by the {num_devices} devices")
  _require(config.eval.global_batch_size % num_devices == 0, "eval.global_batch_size",
           f"{config.eval.global_batch_size} is not divisible by the {num_devices} devices")
  _require(tr.global_batch_size % process_count == 0, "train.global_batch_size",
           f"not divisible by {process_count} processes")
  _require(tr.num_train_steps > 0 or tr.num_epochs > 0, "train.num_train_steps",
           "set num_train_steps > 0 or num_epochs > 0")
  _require(tr.checkpoint_every_steps >= 1, "train.checkpoint_every_steps", "must be >= 1")
  _require(tr.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
  _require(tr.log_every_steps >= 1, "train.log_every_steps", "must be >= 1")
  _require(0.0 <= config.loss.label_smoothing < 1.0, "loss.label_smoothing", "must be in [0, 1)")
  _require(config.loss.mixup_alpha >= 0.0, "loss.mixup_alpha", "must be >= 0")


def validate(config: ConfigDict, input_shape: Optional[Sequence[int]] = None,
             num_devices: int = 1, process_count: int = 1) -> None:
  """Runs every check that can run without compiling; raises ValueError naming the field."""
  check_keys(config)
  if input_shape is not None:
    check_model(config.model, input_shape)
  check_init_from(config.init_from)
  check_training(config, num_devices, process_count)
