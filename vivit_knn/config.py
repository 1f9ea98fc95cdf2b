"""The experiment config schema: defaults for every key, and the checks run before building.

Every `configs/*.py` starts from `base_config()`. `validate()` checks a run's
config once, before any data or model is built: unknown keys (with a suggestion),
keys set away from their defaults that the model never reads, and values that
cannot work, naming the field. The builders trust a checked config. Loading or
checking a config does not import TensorFlow.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple

import ml_collections

from vivit_knn import keys
from vivit_knn.data.registry import DATASET_DEFAULTS, clip_shape
from vivit_knn.keys import require
from vivit_knn.models import registry as model_registry
from vivit_knn.models import partitioning, resnet
from vivit_knn.models.attention import attention_config
from vivit_knn.weights import formats

ConfigDict = ml_collections.ConfigDict


def model_config() -> ConfigDict:
  """Default `config.model`: ViViT-B/16x2 factorised encoder with dense attention.

  `name` picks the family (`vivit_knn.models.registry.FAMILIES`); this block holds
  the keys several families read, and each family adds its own through its
  `ModelFamily.defaults`. Shared by TimeSformer and X-ViT: `attention_type`
  ('' = the family default), `temporal_attention` (TimeSformer's divided time
  attention, X-ViT's head) and `time_embed_init_std` (0 = zeros, the papers' init).
  """
  config = ConfigDict({
      "name": "vivit",
      "hidden_size": 768,
      "patch_size": (16, 16, 2),
      "num_heads": 12,
      "mlp_dim": 3072,
      "num_layers": 12,
      "attention": attention_config(),
      "classifier": "token",
      "dropout_rate": 0.0,
      "attention_dropout_rate": 0.0,
      "stochastic_depth": 0.0,
      "kernel_init_method": "",
      "remat": False,
      "dtype": "float32",
      "attention_type": "",
      "temporal_attention": attention_config(),
      # MLP activation: '' = the family's source (vivit/student: 'gelu_tanh' as scenic;
      # timesformer/xvit: 'gelu_exact' as their torch code), or one of MLP_ACTIVATIONS.
      "mlp_activation": "",
      "time_embed_init_std": 0.0,
  })
  for key, value in model_registry.default_config_keys().items():
    if key in config:
      raise ValueError(f"model.{key} is both a common key and a family's own")
    config[key] = value
  return config


def optimizer_config() -> ConfigDict:
  """Default `config.optimizer` (see `vivit_knn.train.optim` for how each key is used)."""
  return ConfigDict({
      "name": "sgd",
      "base_learning_rate": 0.1,
      "end_learning_rate": 0.0,
      # Linear warmup: `warmup_steps`, or, when `warmup_epochs` >= 0, that many epochs of
      # the train split (turned into steps when the run starts); setting both is an error.
      "warmup_steps": 0,
      "warmup_epochs": -1.0,
      "momentum": 0.9,
      "nesterov": False,
      "beta1": 0.9,
      "beta2": 0.999,
      "weight_decay": 0.0,
      "grad_clip_norm": 1.0,
      # Regexes on '/'-joined parameter paths; () = every parameter trains.
      "trainable_patterns": (),
      # Layer-wise lr decay factor; 1.0 = off.
      "layer_decay": 1.0,
  })


def init_from_config() -> ConfigDict:
  """Default `config.init_from` (scenic's names): where fresh parameters are initialised from.

  `checkpoint_path` '' means off; `checkpoint_format` is one of
  `vivit_knn.weights.formats.MODEL_FORMATS` ('orbax': a tree in our naming, e.g.
  from `python -m vivit_knn.weights.convert`). Used only when the workdir holds no
  checkpoint (resume wins); see `vivit_knn.weights.init_from`.
  """
  return ConfigDict({
      "checkpoint_path": "",
      "checkpoint_format": "orbax",
      "restore_positional_embedding": True,
      "positional_embed_size_change": "tile",
      "kernel_init_method": "central_frame_initializer",
      # Restore the source's classifier (`head` -> `output_projection`) when its class
      # count matches the dataset's: evaluates a released video classifier as it is.
      "restore_head": False,
      # Refuse to start from random weights: the configured checkpoints must be given.
      "required": False,
      # CAST's experts: the spatial (OpenAI CLIP image tower) and temporal (VideoMAE)
      # checkpoints, placed under `spatial` / `temporal` of a fresh CAST.
      "spatial_expert": {"checkpoint_path": "", "checkpoint_format": "clip"},
      "temporal_expert": {"checkpoint_path": "", "checkpoint_format": "videomae"},
  })


DISTILL_METHODS = ("", "fad", "fpld")
STAGE1_CHECKPOINT_FORMATS = ("torchvision", "none")


def distill_config() -> ConfigDict:
  """Default `config.distill`: two-stage distillation (TSD); off while `method` is ''.

  Stage 1 (`stage1_steps`, or else `stage1_epochs`) distils a per-frame ResNet of
  `stage1.depth` with `alpha*CE + (1-alpha)*KL + beta*aux`, aux the feature MSE
  ('fad') or the OFA loss of the branch heads ('fpld'). Stage 2 distils the
  transformer of `stage2.config_file` restored from `stage2.workdir`, with
  `alpha*CE + (1-alpha)*KL`. `stage1.checkpoint_format`: 'torchvision' (a
  `.pth`/`.pt`/`.npz` state dict) or 'none' (random teacher: smoke tests only).
  """
  return ConfigDict({
      "method": "",
      "alpha": 0.5,
      "beta": 1.0,
      "tau": 1.0,
      "eta": 1.1,
      "stage1_steps": 0,
      "stage1_epochs": 0.0,
      "stage1": {"depth": 101, "checkpoint_path": "", "checkpoint_format": "torchvision"},
      "stage2": {"config_file": "", "workdir": ""},
  })


def base_config() -> ConfigDict:
  """The full schema with defaults. Configs override values; they may not add keys."""
  return ConfigDict({
      "experiment_name": "experiment",
      "seed": 0,
      "dataset": DATASET_DEFAULTS["synthetic"](),
      "model": model_config(),
      "init_from": init_from_config(),
      "distill": distill_config(),
      "optimizer": optimizer_config(),
      # `objective`: the training objective by name ('' = chosen from the model and
      # `distill`: 'classification', 'verb_noun' for a two-head CAST, 'distill' with
      # distill.method); see vivit_knn/train/objective_table.py.
      "loss": {"label_smoothing": 0.0, "mixup_alpha": 0.0, "objective": ""},
      "train": {
          "global_batch_size": 32,
          # Either a step count, or (when num_train_steps <= 0) epochs of the train split.
          "num_train_steps": 0,
          "num_epochs": 30.0,
          "log_every_steps": 50,
          # Split each batch into this many sequential micro-batches (same update, less memory).
          "grad_accum_steps": 1,
          "checkpoint_every_steps": 500,
          "keep_checkpoints": 3,
          # Global batches built and sent to the devices ahead of the step (0 = none).
          "prefetch_batches": 2,
          "eval_at_end": True,
          # Evaluate every this many steps (0 = only at the end); the best eval's checkpoint
          # (by `best_metric`, e.g. top1, top5, loss, action_top1) is kept in checkpoints_best/.
          "eval_every_steps": 0,
          "best_metric": "top1",
      },
      # `checkpoint`: which one --mode=eval evaluates: 'latest', 'best' or a step number.
      "eval": {"global_batch_size": 32, "confusion_matrix": True, "save_logits": False,
               "checkpoint": "latest"},
      # Mesh axes (data, fsdp, tensor); data=-1 takes the remaining devices. `rules` maps
      # logical axes of parameters and activations to mesh axes as (name, axis) pairs; empty =
      # the defaults in vivit_knn/models/partitioning.py (embed->fsdp, heads/mlp->tensor).
      "mesh": {"data": -1, "fsdp": 1, "tensor": 1, "fsdp_min_param_size": 2**18,
               "rules": ()},
  })


def _unknown_keys(cfg: ConfigDict, schema: ConfigDict, prefix: str) -> Iterable[str]:
  for key in cfg.keys():
    path = f"{prefix}{key}"
    if key not in schema:
      yield path + keys.did_you_mean(key, schema.keys(), prefix)
    elif isinstance(schema[key], ConfigDict):
      if not isinstance(cfg[key], ConfigDict):
        yield f"{path} (must be a config block, got {type(cfg[key]).__name__})"
      elif key != "dataset" or prefix:
        yield from _unknown_keys(cfg[key], schema[key], path + ".")


def _unknown_dataset_keys(cfg: ConfigDict, name: str) -> Iterator[str]:
  """`_unknown_keys` of `config.dataset`, saying so when only other datasets have a key."""
  schema = DATASET_DEFAULTS[name]()
  for key in cfg.keys():
    if key in schema:
      continue
    owners = [other for other, defaults in DATASET_DEFAULTS.items() if key in defaults()]
    yield (f"dataset.{key} (cannot take effect: only dataset.name "
           f"{', '.join(map(repr, owners))} read it, this is {name!r})" if owners else
           f"dataset.{key}{keys.did_you_mean(key, schema.keys(), 'dataset.')}")


def check_keys(config: ConfigDict) -> None:
  """Raises ValueError listing every key that the schema (or its dataset's schema) lacks."""
  schema = base_config()
  bad = list(_unknown_keys(config, schema, ""))
  dataset = config.get("dataset")
  name = dataset.get("name") if isinstance(dataset, ConfigDict) else None
  if name not in DATASET_DEFAULTS:
    raise ValueError(f"dataset.name={name!r} is unknown; known: {sorted(DATASET_DEFAULTS)}")
  bad += list(_unknown_dataset_keys(config.dataset, name))
  if bad:
    raise ValueError("Unknown config keys: " + "; ".join(bad))


def _set_leaves(value: Any, default: Any, path: str) -> Iterator[Tuple[str, Any]]:
  """`(path, value)` of every leaf of `value` that differs from the schema's `default`."""
  if isinstance(value, ConfigDict):
    for key in value.keys():
      sub = default.get(key) if isinstance(default, ConfigDict) else None
      yield from _set_leaves(value[key], sub, f"{path}.{key}")
  elif value != default:
    yield path, value


def _get_leaf(value: Any, leaf: str) -> Any:
  """The value at `leaf` (`.a.b`, as `_set_leaves` names it) under `value`."""
  for key in leaf.split(".")[1:]:
    value = value.get(key) if isinstance(value, ConfigDict) else None
  return value


def check_inactive_keys(cfg: ConfigDict, field: str = "model") -> None:
  """Raises ValueError for keys of `config.model` set away from their defaults but never read.

  E.g. the factorised-encoder ViViT never reads `model.num_layers`. The message
  names each key, why, and the keys to set instead (`registry.inactive_keys`).
  """
  schema = model_config()
  bad = []
  for key, (why, instead) in model_registry.inactive_keys(cfg, field).items():
    for leaf, value in _set_leaves(cfg[key], schema[key], ""):
      fix = (f"set {' or '.join(f'{field}.{k}{leaf}' for k in instead)} instead" if instead
             else f"leave it at its default {_get_leaf(schema[key], leaf)!r}")
      bad.append(f"{field}.{key}{leaf}={value!r} cannot take effect ({why}): {fix}")
  if bad:
    raise ValueError("; ".join(bad))


def check_model(cfg: ConfigDict, input_shape: Sequence[int], field: str = "model") -> None:
  """Checks model hyper-parameters against one clip's `(T, H, W, C)`; errors name the field.

  The family's checks (`vivit_knn.models.registry.check`), then `check_inactive_keys`.
  """
  model_registry.check(cfg, input_shape, field)
  check_inactive_keys(cfg, field)


def check_init_from(config: ConfigDict) -> None:
  """Checks `config.init_from` (the files are read when the run starts).

  Settings that could not take effect are errors: experts for a model that is not
  CAST, `restore_head` with no checkpoint, and with `required` a missing checkpoint.
  """
  cfg, model = config.init_from, config.model
  require(cfg.checkpoint_format in formats.MODEL_FORMATS, "init_from.checkpoint_format",
          f"must be one of {formats.MODEL_FORMATS}, got {cfg.checkpoint_format!r}")
  require(cfg.positional_embed_size_change in formats.POSEMB_SIZE_CHANGES,
          "init_from.positional_embed_size_change",
          f"must be one of {formats.POSEMB_SIZE_CHANGES}, got "
          f"{cfg.positional_embed_size_change!r}")
  require(cfg.kernel_init_method in formats.KERNEL_INIT_METHODS, "init_from.kernel_init_method",
          f"must be one of {formats.KERNEL_INIT_METHODS}, got {cfg.kernel_init_method!r}")
  require(not cfg.restore_head or bool(cfg.checkpoint_path), "init_from.restore_head",
          "needs init_from.checkpoint_path (the checkpoint whose classifier to restore)")
  for expert, allowed in (("spatial_expert", formats.SPATIAL_EXPERT_FORMATS),
                          ("temporal_expert", formats.TEMPORAL_EXPERT_FORMATS)):
    field = f"init_from.{expert}"
    require(cfg[expert].checkpoint_format in allowed, f"{field}.checkpoint_format",
            f"must be one of {allowed}, got {cfg[expert].checkpoint_format!r}")
    require(not cfg[expert].checkpoint_path or model.name == "cast", f"{field}.checkpoint_path",
            f"applies to model.name='cast' only (this model is {model.name!r})")
  if not cfg.required:
    return
  scratch = "or set --config.init_from.required=False to start from random weights"
  if model.name == "cast":
    for expert, what in (("spatial_expert", "CLIP image tower"),
                         ("temporal_expert", "VideoMAE encoder")):
      require(bool(cfg[expert].checkpoint_path), f"init_from.{expert}.checkpoint_path",
              f"is required by this config (init_from.required=True): the {what} "
              f"checkpoint; pass --config.init_from.{expert}.checkpoint_path=<file>, {scratch}")
  else:
    require(bool(cfg.checkpoint_path), "init_from.checkpoint_path",
            f"is required by this config (init_from.required=True): pass "
            f"--config.init_from.checkpoint_path=<file> (init_from.checkpoint_format="
            f"{cfg.checkpoint_format!r}), {scratch}")


def check_training(config: ConfigDict, num_devices: int, process_count: int = 1) -> None:
  """Checks batch sizes and loop settings against the number of batch shards."""
  tr = config.train
  require(tr.global_batch_size >= 1, "train.global_batch_size",
          f"must be >= 1, got {tr.global_batch_size}")
  require(tr.global_batch_size % num_devices == 0, "train.global_batch_size",
          f"{tr.global_batch_size} is not divisible by the {num_devices} batch shards "
          "(mesh.data x mesh.fsdp)")
  require(config.eval.global_batch_size >= 1, "eval.global_batch_size",
          f"must be >= 1, got {config.eval.global_batch_size}")
  require(config.eval.global_batch_size % num_devices == 0, "eval.global_batch_size",
          f"{config.eval.global_batch_size} is not divisible by the {num_devices} batch shards")
  require(tr.global_batch_size % process_count == 0, "train.global_batch_size",
          f"not divisible by {process_count} processes")
  require(tr.num_train_steps > 0 or tr.num_epochs > 0, "train.num_train_steps",
          "set num_train_steps > 0 or num_epochs > 0")
  require(tr.num_train_steps >= 0, "train.num_train_steps",
          f"must be >= 0 (0 = use num_epochs), got {tr.num_train_steps}")
  require(tr.checkpoint_every_steps >= 1, "train.checkpoint_every_steps", "must be >= 1")
  require(tr.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
  require(tr.log_every_steps >= 1, "train.log_every_steps", "must be >= 1")
  require(tr.grad_accum_steps >= 1, "train.grad_accum_steps", "must be >= 1")
  require(tr.prefetch_batches >= 0, "train.prefetch_batches",
          f"must be >= 0 (0 = build each batch when the step needs it), got {tr.prefetch_batches}")
  require(tr.eval_every_steps >= 0, "train.eval_every_steps",
          f"must be >= 0 (0 = evaluate only at the end), got {tr.eval_every_steps}")
  two_heads = config.model.name == "cast" and config.model.cast.num_verbs > 0
  metrics = ("top1", "top5", "loss") + (("verb_top1", "noun_top1", "action_top1")
                                        if two_heads else ())
  require(tr.best_metric in metrics, "train.best_metric",
          f"{tr.best_metric!r} is not an eval metric of this model; use one of {metrics}")
  choice = str(config.eval.checkpoint)
  require(choice in ("latest", "best") or choice.isdigit(), "eval.checkpoint",
          f"must be 'latest', 'best' or a step number, got {choice!r}")
  partitioning.rules_table(config.mesh.rules)  # ValueError naming mesh.rules
  require(tr.global_batch_size % (tr.grad_accum_steps * num_devices) == 0,
          "train.grad_accum_steps",
          f"global_batch_size={tr.global_batch_size} must split into {tr.grad_accum_steps} "
          f"micro-batches that each divide over the {num_devices} batch shards")
  require(0.0 <= config.loss.label_smoothing < 1.0, "loss.label_smoothing", "must be in [0, 1)")
  require(config.loss.mixup_alpha >= 0.0, "loss.mixup_alpha", "must be >= 0")


def validate(config: ConfigDict, input_shape: Optional[Sequence[int]] = None,
             num_devices: int = 1, process_count: int = 1) -> None:
  """Checks a run's config once, before anything is built; raises ValueError naming the field.

  `input_shape` is one clip's `(T, H, W, C)` (default: what `config.dataset`
  describes); `num_devices` the batch shards of the mesh (`mesh.data x mesh.fsdp`).
  """
  check_keys(config)
  check_model(config.model, input_shape or clip_shape(config.dataset))
  check_init_from(config)
  check_training(config, num_devices, process_count)
  check_distill(config)


def check_distill(config: ConfigDict) -> None:
  """Checks `config.distill` and that the student model has the parts its method needs."""
  ds = config.distill
  require(ds.method in DISTILL_METHODS, "distill.method",
          f"must be one of {DISTILL_METHODS} ('' = off), got {ds.method!r}")
  if not ds.method:
    return
  require(0.0 <= ds.alpha <= 1.0, "distill.alpha", f"must be in [0, 1], got {ds.alpha}")
  require(ds.beta >= 0.0, "distill.beta", f"must be >= 0, got {ds.beta}")
  require(ds.tau > 0.0, "distill.tau", f"must be > 0, got {ds.tau}")
  require(ds.eta > 0.0, "distill.eta", f"must be > 0, got {ds.eta}")
  require(ds.stage1_steps >= 0, "distill.stage1_steps", f"must be >= 0, got {ds.stage1_steps}")
  require(ds.stage1_epochs >= 0.0, "distill.stage1_epochs",
          f"must be >= 0, got {ds.stage1_epochs}")
  has_stage1 = ds.stage1_steps > 0 or ds.stage1_epochs > 0
  if has_stage1:
    require(ds.stage1.depth in resnet.DEPTHS, "distill.stage1.depth",
            f"must be one of {sorted(resnet.DEPTHS)}, got {ds.stage1.depth}")
    require(ds.stage1.checkpoint_format in STAGE1_CHECKPOINT_FORMATS,
            "distill.stage1.checkpoint_format",
            f"must be one of {STAGE1_CHECKPOINT_FORMATS}, got {ds.stage1.checkpoint_format!r}")
    require(ds.stage1.checkpoint_format == "none" or bool(ds.stage1.checkpoint_path),
            "distill.stage1.checkpoint_path",
            "is required: a torchvision ResNet state dict (.pth/.pt/.npz) fine-tuned on the "
            "dataset's classes")
    m = config.model
    require(m.name == "student", "model.name",
            f"must be 'student' for distill.method={ds.method!r}, got {m.name!r}")
    if ds.method == "fad":
      channels = resnet.stage_channels(ds.stage1.depth)[-1]
      require(m.student.aligner_features == channels, "model.student.aligner_features",
              f"must be {channels} (layer4 channels of ResNet-{ds.stage1.depth}) for "
              f"distill.method='fad', got {m.student.aligner_features}")
    else:
      require(m.student.branch_heads >= 1, "model.student.branch_heads",
              "must be >= 1 (4 in the paper) for distill.method='fpld'")
  steps = config.train.num_train_steps
  stage1_covers_run = steps > 0 and ds.stage1_steps >= steps
  if not stage1_covers_run:
    require(bool(ds.stage2.config_file), "distill.stage2.config_file",
            "is required: the teacher transformer's config file (stage 2)")
    require(bool(ds.stage2.workdir), "distill.stage2.workdir",
            "is required: the teacher's training run directory (its Orbax checkpoints)")
