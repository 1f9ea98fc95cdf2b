r"""Exports a trained run for serving: a TensorFlow SavedModel and a StableHLO program.

    python -m vivit_knn.tools.export --workdir=runs/synthetic_dk --out=exports/synthetic_dk
    python -m vivit_knn.tools.export --workdir=<run> --out=<dir> --step=200 --overwrite

Writes to `--out`, from the run's best (kept with `train.eval_every_steps`), else newest, or
`--step` verified checkpoint:
`saved_model/` (`jax2tf`; signature `serving_default` takes uint8 RGB `frames [batch,
T, H, W, 3]` and normalises them as the eval pipeline does, `normalized` takes
float32 `clips`; both return `probabilities [batch, classes]`, or a two-head
CAST's `verb_`, `noun_` and `action_probabilities`, and `top5`; class names in
`assets/classes.txt`), `model.stablehlo` (`normalized` as a `jax.export`
serialisation with the weights inside and a symbolic batch; specs in
`model.stablehlo.json`) and `export.json` (step, config sha256, input shape,
classes, how to load each). Each batch row is one clip (no multi-view averaging).
Attention is exported on its XLA path. An existing `--out` is replaced only with
`--overwrite`, and only when it holds an earlier export and nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags

from vivit_knn import cli
from vivit_knn.models import cpu_paths, registry, student
from vivit_knn.train import checkpoint, run_config, run_info
from vivit_knn.weights.convert import json_object, swap_in

WRITER = "vivit_knn.tools.export"
MARKER = "export.json"
SAVED_MODEL, STABLEHLO = "saved_model", "model.stablehlo"
_OURS = {MARKER, SAVED_MODEL, STABLEHLO, STABLEHLO + ".json"}
TOP_K = 5

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.")
_OUT = flags.DEFINE_string("out", None, "Folder to write the export to.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it holds an earlier "
                               "export (a folder holding anything else is never replaced).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the best "
                             "eval's when the run keeps one, else the newest).")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda"],
                               "Platforms the exported programs run on.")


def _check_out(out: str, overwrite: bool) -> None:
  """Raises unless `out` is free, or is an earlier export and `overwrite` is set."""
  if not os.path.lexists(out):
    return
  if os.path.islink(out) or not os.path.isdir(out):
    raise FileExistsError(f"--out={out} is a file, not an earlier export; choose another --out")
  entries = set(os.listdir(out))
  marker = json_object(os.path.join(out, MARKER))
  ours = not entries if marker is None else marker.get("written_by") == WRITER
  if not ours or entries - _OURS:
    raise FileExistsError(f"--out={out} is not an earlier export (it lacks our {MARKER} or "
                          f"holds other files); refusing to replace it: choose another --out")
  if not overwrite:
    raise FileExistsError(f"--out={out} already exists; pass --overwrite to replace it")


def _xla_attention(model: Any) -> Any:
  """`config.model` with every attention `impl` on 'xla': exported programs cannot carry Pallas."""

  def xla(node):
    return {k: xla(v) if isinstance(v, dict) else "xla" if k == "impl" else v
            for k, v in node.items()}

  return ml_collections.ConfigDict(xla(model.to_dict()))


def _restore(workdir: str, step: Optional[int]):
  """`(params, step)`: the best eval's checkpoint if kept, else the newest, or `step`; verified."""
  best = checkpoint.resolve(workdir) / checkpoint.BEST_FOLDER
  kept_best = step is None and best.is_dir() and any(p.name.isdigit() for p in best.iterdir())
  if not kept_best and (step is None or not checkpoint.has_checkpoints(workdir)):
    return run_info.restore_params(workdir)
  ckpt = checkpoint.Checkpointer(workdir, read_only=True,
                                 folder=checkpoint.BEST_FOLDER if kept_best else "checkpoints")
  return ckpt.restore(None, step=step)["params"], ckpt.restored_step


def serving_function(model: Any, num_classes: int):
  """`forward(params, clips) -> outputs`: softmax probabilities and top-k of float clips."""

  def forward(params, clips):
    logits, out = model.apply({"params": params}, clips, train=False)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    # A sort, not lax.top_k: TensorFlow's StableHLO reader does not know top_k's new form.
    top = jnp.argsort(-probs, axis=-1, stable=True)[:, :min(TOP_K, num_classes)].astype(jnp.int32)
    if "verb_logits" not in out:
      return {"probabilities": probs, "top5": top}
    # Two heads: the logits are the joint log-probabilities of the actions.
    head = lambda name: jax.nn.softmax(out[name].astype(jnp.float32), axis=-1)
    return {"verb_probabilities": head("verb_logits"), "noun_probabilities": head("noun_logits"),
            "action_probabilities": probs, "top5": top}

  return forward


def _save_tf(forward, params, shape: Sequence[int], normalization: str,
             class_names: Sequence[str], path: str, platforms: Sequence[str]) -> None:
  """Writes the SavedModel: weights as variables, signatures `serving_default`, `normalized`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # after the CLI quiets it
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  from vivit_knn.data.processors import normalize  # pylint: disable=g-import-not-at-top

  tf_forward = jax2tf.convert(forward, polymorphic_shapes=[None, "(b, ...)"], with_gradient=False,
                              native_serialization_platforms=tuple(platforms))
  leaves, treedef = jax.tree.flatten(params)
  module = tf.Module()
  module.params = [tf.Variable(x, trainable=False) for x in leaves]
  spec = lambda dtype, name: tf.TensorSpec([None] + list(shape), dtype, name=name)

  @tf.function(autograph=False, input_signature=[spec(tf.float32, "clips")])
  def normalized(clips):
    return tf_forward(jax.tree.unflatten(treedef, list(module.params)), clips)

  @tf.function(autograph=False, input_signature=[spec(tf.uint8, "frames")])
  def serving(frames):
    return normalized(normalize(tf.cast(frames, tf.float32), normalization))

  module.normalized, module.serving = normalized, serving
  with tempfile.TemporaryDirectory() as tmp:
    classes = os.path.join(tmp, "classes.txt")
    with open(classes, "w") as f:
      f.write("".join(f"{name}\n" for name in class_names))
    module.classes = tf.saved_model.Asset(classes)
    tf.saved_model.save(module, path, signatures={"serving_default": serving,
                                                  "normalized": normalized})


def _save_stablehlo(forward, params, shape: Sequence[int], out: str,
                    platforms: Sequence[str]) -> Dict[str, Any]:
  dims = ", ".join(str(d) for d in shape)
  clips = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {dims}"), jnp.float32)
  exported = jax.export.export(jax.jit(functools.partial(forward, params)),
                               platforms=tuple(platforms))(clips)
  with open(os.path.join(out, STABLEHLO), "wb") as f:
    f.write(exported.serialize())
  spec = lambda a: {"shape": [d if isinstance(d, int) else str(d) for d in a.shape],
                    "dtype": str(a.dtype)}
  outputs = jax.tree.unflatten(exported.out_tree, [spec(a) for a in exported.out_avals])
  return {"inputs": {"clips": spec(clips)}, "outputs": outputs,
          "platforms": list(exported.platforms),
          "calling_convention_version": exported.calling_convention_version}


def export(workdir: str, out: str, overwrite: bool = False, step: Optional[int] = None,
           platforms: Sequence[str] = ("cpu", "cuda")) -> Dict[str, Any]:
  """Exports checkpoint `step` (default: the newest) of the run in `workdir` to `out`.

  `overwrite` replaces an existing `out` that holds an earlier export only;
  `platforms` are those the programs are lowered for ('cpu', 'cuda', 'tpu').
  Returns the contents of `export.json`.
  """
  out = os.path.abspath(out)
  _check_out(out, overwrite)
  config = run_config.load_run_config(workdir)
  if config is None:
    raise FileNotFoundError(f"--workdir={workdir} holds no {run_config.RUN_CONFIG}: export "
                            "needs the config a training run stores there")
  info = run_info.read_run_info(workdir)
  names, shape = list(info["class_names"]), [int(d) for d in info["input_shape"]]
  model = registry.build_model(_xla_attention(config.model), len(names))
  params, step = _restore(workdir, step)
  if config.model.name == "student":
    params = student.export_params(params)  # the branch heads and aligner train only
  # The synthetic clips have no such field: they are zero-centred, as `--mode=infer` makes them.
  normalization = config.dataset.get("normalization", "zero_centered")
  forward = serving_function(model, len(names))
  run_dir = checkpoint.resolve(workdir)
  best = run_dir / "eval" / "best.json"
  record = {
      "written_by": WRITER, "workdir": str(run_dir), "step": step,
      "best_checkpoint": (json.loads(best.read_text()) if best.exists() else None),
      "config_sha256": hashlib.sha256((run_dir / run_config.RUN_CONFIG).read_bytes()).hexdigest(),
      "model": config.model.name, "input_shape": shape, "normalization": normalization,
      "classes": names, "views": "one clip per batch row; the eval's multi-view averaging is "
      "not included: average log(probabilities) over a video's views, then softmax"}

  def write(work: str) -> str:
    written = os.path.join(work, "export")
    os.makedirs(written)
    # The loop-free attention: its shapes need no static batch and it runs on any backend.
    with cpu_paths.disabled():
      try:
        _save_tf(forward, params, shape, normalization, names,
                 os.path.join(written, SAVED_MODEL), platforms)
        specs = _save_stablehlo(forward, params, shape, written, platforms)
      except OSError:
        raise
      except Exception as err:  # pylint: disable=broad-except  # any tracing or lowering failure
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"model.name={config.model.name!r} cannot be exported: "
                         f"{type(err).__name__}: {first}") from err
    with open(os.path.join(written, STABLEHLO + ".json"), "w") as f:
      json.dump(specs, f, indent=1)
    record["outputs"] = sorted(specs["outputs"])
    record["platforms"] = specs["platforms"]
    record["load"] = {
        "saved_model": f"tf.saved_model.load('{out}/{SAVED_MODEL}')"
                       ".signatures['serving_default'](frames=uint8_frames)",
        "saved_model_normalized": f"tf.saved_model.load('{out}/{SAVED_MODEL}')"
                                  ".signatures['normalized'](clips=float32_clips)",
        "stablehlo": f"jax.export.deserialize(open('{out}/{STABLEHLO}', 'rb').read())"
                     ".call(float32_clips)",
        "tf_serving": f"docker run -p 8501:8501 -v {out}/{SAVED_MODEL}:/models/model/1 "
                      "-e MODEL_NAME=model tensorflow/serving"}
    with open(os.path.join(written, MARKER), "w") as f:
      json.dump(record, f, indent=1)
    return written

  swap_in(out, "exporting", write, lambda: _check_out(out, overwrite))
  return record


def main(argv: Sequence[str]) -> None:
  """Exports `--workdir` to `--out` and prints what was written (errors: see `vivit_knn.cli`)."""
  del argv  # `cli.run` refuses stray arguments
  for flag in (_WORKDIR, _OUT):
    if not flag.value:
      raise ValueError(f"--{flag.name} is required")
  record = export(_WORKDIR.value, _OUT.value, _OVERWRITE.value, _STEP.value, _PLATFORMS.value)
  out = os.path.abspath(_OUT.value)
  print(f"exported step {record['step']} of {_WORKDIR.value} ({record['model']}, input "
        f"{'x'.join(map(str, record['input_shape']))}, {len(record['classes'])} classes) to {out}")


def run() -> None:
  """Console entry (``vivit-knn-export``): one-line errors, exit codes of the CLI."""
  cli.run(main)


if __name__ == "__main__":
  run()
