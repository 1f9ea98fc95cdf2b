"""Export for serving (`vivit_knn.tools.export`): the artifacts reproduce the model they export.

Two short trained runs are checked against their own saved eval logits: the
SavedModel in a process that loads TensorFlow and never JAX, the StableHLO
program through `jax.export`. Every model family round-trips at tiny shapes
against its JAX forward, and bad input stops the command in one line.
"""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import load_config, run_python, tiny_config

TOL = 1e-5
EXPORT = ["-m", "vivit_knn.tools.export"]
TRAIN = ["--config.train.num_train_steps=4", "--config.train.checkpoint_every_steps=2",
         "--config.train.global_batch_size=8", "--config.dataset.num_train=32",
         "--config.dataset.num_eval=7", "--config.optimizer.warmup_steps=0",
         "--config.train.eval_at_end=False"]

# argv: saved_model dir, output .npz, then `signature=inputs.npy` pairs. Each signature runs
# at batch sizes 1 and 3 over the inputs; outputs are saved as `<signature>/<key>/<batch>`.
_TF_ONLY = r"""
import importlib.abc
import sys


class NoJax(importlib.abc.MetaPathFinder):
  # TensorFlow imports JAX where it is installed (tf.lite, optionally); a serving machine has none.
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib"):
      raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, NoJax())
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
result = {"classes": np.array(open(loaded.classes.asset_path.numpy()).read().splitlines())}
for pair in sys.argv[3:]:
  signature, path = pair.split("=")
  fn, x = loaded.signatures[signature], np.load(path)
  name = "frames" if signature == "serving_default" else "clips"
  for b in (1, 3):
    outs = [fn(**{name: tf.constant(x[i:i + b])}) for i in range(0, len(x), b)]
    for key in outs[0]:
      result[f"{signature}/{key}/{b}"] = np.concatenate([o[key].numpy() for o in outs])
np.savez(sys.argv[2], **result)
assert "jax" not in sys.modules, sorted(m for m in sys.modules if m.startswith("jax"))
"""


def _softmax(logits):
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def _ranking(probs, k=5):
  return np.argsort(-probs, axis=-1, kind="stable")[:, :min(k, probs.shape[-1])]


def _main(*args, check=True):
  return run_python(["-m", "vivit_knn.main"] + list(args), check=check)


def _eval_clips(workdir, index):
  """The clips the eval run scored, rebuilt from the run's stored config, in eval order."""
  from vivit_knn.data.registry import build_dataset
  from vivit_knn.train.run_config import load_run_config
  config = load_run_config(workdir)
  batches = list(build_dataset(config.dataset).eval_batches(config.eval.global_batch_size))
  keep = [b["mask"] > 0 for b in batches]
  got = np.concatenate([b["index"][k] for b, k in zip(batches, keep)])
  np.testing.assert_array_equal(got, index)
  return np.concatenate([b["inputs"][k] for b, k in zip(batches, keep)]).astype(np.float32)


# The k-NN run's eval clips have a noisy background between 8-bit levels: only the float
# signature can take them exactly. The TimeSformer run draws clips without noise, so each is
# exactly an 8-bit frame (pixels 0 and 255 are -1 and 1) and the uint8 signature is checked.
RUNS = {"dk_knn": ("configs/synthetic_dk.py", []),
        "timesformer_dense": ("configs/synthetic_timesformer.py", ["--config.dataset.noise=0.0"])}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_trained_run_exports_its_eval_probabilities(tmp_path, run):
  config, extra = RUNS[run]
  work, out = str(tmp_path / "run"), str(tmp_path / "export")
  _main(f"--config={config}", f"--workdir={work}", *TRAIN, *extra)
  _main(f"--config={config}", f"--workdir={work}", "--mode=eval", "--config.eval.save_logits=True")
  saved = np.load(os.path.join(work, "eval", "logits_step_4_1x1.npz"))
  run_python(EXPORT + [f"--workdir={work}", f"--out={out}"])

  with open(os.path.join(out, "export.json")) as f:
    record = json.load(f)
  with open(os.path.join(work, "config.json"), "rb") as f:
    assert record["config_sha256"] == hashlib.sha256(f.read()).hexdigest()
  with open(os.path.join(work, "run_info.json")) as f:
    info = json.load(f)
  assert record["step"] == 4 and record["classes"] == info["class_names"]
  assert record["input_shape"] == info["input_shape"]

  clips = _eval_clips(work, saved["index"])
  expected = _softmax(saved["logits"].astype(np.float64))
  assert np.ptp(expected) > 1e-3  # a trained head: not the uniform start
  inputs = {"normalized": clips}
  if extra:
    frames = np.rint((clips + 1.0) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(frames / np.float32(127.5) - 1.0, clips)
    inputs["serving_default"] = frames
  pairs = []
  for signature, x in inputs.items():
    np.save(tmp_path / f"{signature}.npy", x)
    pairs.append(f"{signature}={tmp_path / f'{signature}.npy'}")
  results = tmp_path / "tf.npz"
  run_python(["-c", _TF_ONLY, os.path.join(out, "saved_model"), str(results)] + pairs)
  got = np.load(results)
  assert list(got["classes"]) == info["class_names"]
  for signature in inputs:
    for b in (1, 3):
      probs = got[f"{signature}/probabilities/{b}"]
      assert np.abs(probs - expected).max() < TOL, (signature, b)
      np.testing.assert_array_equal(got[f"{signature}/top5/{b}"], _ranking(expected))

  with open(os.path.join(out, "model.stablehlo"), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with open(os.path.join(out, "model.stablehlo.json")) as f:
    specs = json.load(f)
  assert specs["inputs"]["clips"]["shape"] == ["b"] + info["input_shape"]
  for b in (1, 3):
    probs = np.concatenate([np.asarray(exported.call(clips[i:i + b])["probabilities"])
                            for i in range(0, len(clips), b)])
    assert np.abs(probs - expected).max() < TOL, b
  if run == "dk_knn":
    _readme_snippets_run(out)


def _readme_snippets_run(out):
  """The README's export section: its Python snippets that load the artifacts run as written."""
  with open("README.md") as f:
    section = f.read().split("## Export for serving")[1].split("\n## ")[0]
  snippets = [block.split("\n", 1)[1] for block in section.split("```")[1::2]
              if block.startswith("python\n") and "localhost" not in block]
  assert len(snippets) == 2, snippets
  for code in snippets:
    proc = run_python(["-c", code.replace("exports/synthetic_dk", out)])
    assert proc.stdout.strip(), proc.stderr  # each prints what it computed


def _small(name, **model):
  """`configs/synthetic_<name>.py` on 4x16x16 clips, with `model` fields changed."""
  config = load_config(f"synthetic_{name}")
  config.dataset.num_frames, config.dataset.image_size = 4, 16
  for key, value in model.items():
    config.model[key] = value
  return config


def _family_configs():
  configs = {f"vivit_{t}_{'knn' if knn else 'dense'}": tiny_config(t, knn=knn)
             for t in ("spacetime", "factorized_encoder", "factorized_self_attention_block",
                       "factorized_dot_product_attention") for knn in (False, True)}
  configs.update({name: _small(name, num_layers=1) for name in ("timesformer", "xvit", "cast")})
  configs["cast_two_heads"] = _small("cast", num_layers=1)
  configs["cast_two_heads"].model.cast.num_verbs = 2
  configs["cast_two_heads"].model.cast.num_nouns = 2
  configs["student"] = _small("tsd")  # its branch heads and aligner are left out
  return configs


FAMILIES = _family_configs()


def _write_run(workdir, config, steps=(1,), params_config=None):
  """A run folder as training leaves it: config, run info, and random checkpoints at `steps`.

  All parameters get noise, so that the zero-initialised heads give distinct probabilities.
  Returns the model and the params of each step.
  """
  from vivit_knn.models.registry import build_model
  from vivit_knn.train.checkpoint import Checkpointer
  from vivit_knn.train.run_config import save_run_config
  from vivit_knn.train.run_info import write_run_info
  d = config.dataset
  shape, n = (d.num_frames, d.image_size, d.image_size, 3), d.num_classes
  model = build_model((params_config or config).model, n)
  params = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + shape),
                                      train=False)["params"])()
  save_run_config(workdir, config)
  write_run_info(workdir, [f"class {i}" for i in range(n)], shape)
  ckpt, saved = Checkpointer(workdir), {}
  for step in steps:
    rng = np.random.default_rng(step)
    saved[step] = jax.tree.map(
        lambda p: (p + 0.05 * rng.standard_normal(p.shape)).astype(p.dtype), params)
    ckpt.save(step, {"params": saved[step]}, force=True)
  ckpt.close()
  return model, shape, saved


def _reference(model, params, x):
  """`{output name: expected probabilities}` from the JAX model itself."""
  logits, out = jax.jit(lambda p, v: model.apply({"params": p}, v, train=False))(params, x)
  if "verb_logits" not in out:
    return {"probabilities": np.asarray(jax.nn.softmax(logits))}
  return {"verb_probabilities": np.asarray(jax.nn.softmax(out["verb_logits"])),
          "noun_probabilities": np.asarray(jax.nn.softmax(out["noun_logits"])),
          "action_probabilities": np.asarray(jax.nn.softmax(logits))}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_round_trips(tmp_path, family):
  import tensorflow as tf

  from vivit_knn.tools import export
  work, out = str(tmp_path / "run"), str(tmp_path / "export")
  model, shape, saved = _write_run(work, FAMILIES[family])
  export.export(work, out)

  rng = np.random.default_rng(0)
  clips = rng.uniform(-1, 1, (3,) + shape).astype(np.float32)
  frames = rng.integers(0, 256, (3,) + shape, dtype=np.uint8)
  both = _reference(model, saved[1], np.concatenate([clips, frames / np.float32(127.5) - 1]))
  part = lambda rows: {key: value[rows] for key, value in both.items()}
  loaded = tf.saved_model.load(os.path.join(out, "saved_model"))
  with open(os.path.join(out, "model.stablehlo"), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  runs = [(part(slice(0, 3)), loaded.signatures["normalized"](clips=clips)),
          (part(slice(3, 6)), loaded.signatures["serving_default"](frames=frames)),
          (part(slice(0, 2)), exported.call(clips[:2]))]
  for expected, got in runs:
    assert sorted(got) == sorted(list(expected) + ["top5"])
    for key, probs in expected.items():
      assert np.ptp(probs) > 1e-3
      assert np.abs(np.asarray(got[key]) - probs).max() < TOL, key
    top = "action_probabilities" if "action_probabilities" in expected else "probabilities"
    np.testing.assert_array_equal(np.asarray(got["top5"]), _ranking(expected[top]))


def _one_line_exit_2(proc, *needles):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]


def test_step_overwrite_and_failure_leave_no_half_export(tmp_path, monkeypatch):
  import tensorflow as tf

  from vivit_knn.tools import export
  config = tiny_config("spacetime")
  config.model.attention.impl = "pallas"  # no kernel on this backend: exported on XLA
  work, out = str(tmp_path / "run"), str(tmp_path / "export")
  model, shape, saved = _write_run(work, config, steps=(1, 2),
                                   params_config=tiny_config("spacetime"))
  clips = np.random.default_rng(1).uniform(-1, 1, (2,) + shape).astype(np.float32)

  def served():
    loaded = tf.saved_model.load(os.path.join(out, "saved_model"))
    return loaded.signatures["normalized"](clips=clips)["probabilities"].numpy()

  assert export.export(work, out)["step"] == 2
  newest = served()
  assert np.abs(newest - _reference(model, saved[2], clips)["probabilities"]).max() < TOL
  with pytest.raises(FileExistsError, match="--overwrite"):
    export.export(work, out, step=1)
  assert export.export(work, out, overwrite=True, step=1)["step"] == 1
  assert np.abs(served() - _reference(model, saved[1], clips)["probabilities"]).max() < TOL

  def fail(*args):
    raise RuntimeError("lowering failed\nsecond line")

  monkeypatch.setattr(export, "_save_stablehlo", fail)
  with pytest.raises(ValueError, match="cannot be exported: RuntimeError: lowering failed$"):
    export.export(work, out, overwrite=True, step=2)
  assert sorted(os.listdir(tmp_path)) == ["export", "run"]  # no temporary folder left
  with open(os.path.join(out, "export.json")) as f:
    assert json.load(f)["step"] == 1  # the earlier export, untouched
  assert np.abs(served() - _reference(model, saved[1], clips)["probabilities"]).max() < TOL


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  work = str(tmp_path_factory.mktemp("tiny") / "run")
  _write_run(work, tiny_config())
  return work


def _bad_cases(tiny_run, tmp):
  """`{case: (argv, parts of the expected message)}` for each refused command line."""
  empty, no_ckpt, mine, foreign = (os.path.join(tmp, n) for n in ("empty", "nockpt", "mine",
                                                                    "foreign"))
  return {
      "no config": ([f"--workdir={empty}", f"--out={tmp}/o"], ["config.json"]),
      "no checkpoint": ([f"--workdir={no_ckpt}", f"--out={tmp}/o"], ["holds no checkpoint"]),
      "no such step": ([f"--workdir={tiny_run}", f"--out={tmp}/o", "--step=7"],
                       ["step 7"]),
      "existing export": ([f"--workdir={tiny_run}", f"--out={mine}"], ["--overwrite"]),
      "foreign folder": ([f"--workdir={tiny_run}", f"--out={foreign}", "--overwrite"],
                         ["not an earlier export"]),
      "unknown flag": ([f"--workdir={tiny_run}", f"--out={tmp}/o", "--bogus=1"], ["bogus"]),
      "no out": ([f"--workdir={tiny_run}"], ["--out is required"]),
  }


@pytest.mark.parametrize("case", ["no config", "no checkpoint", "no such step", "existing export",
                                  "foreign folder", "unknown flag", "no out"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_run, case):
  from vivit_knn.train.run_config import save_run_config
  from vivit_knn.train.run_info import write_run_info
  os.makedirs(tmp_path / "empty")
  save_run_config(str(tmp_path / "nockpt"), tiny_config())
  write_run_info(str(tmp_path / "nockpt"), ["a", "b", "c", "d"], [4, 24, 24, 3])
  os.makedirs(tmp_path / "mine")
  with open(tmp_path / "mine" / "export.json", "w") as f:
    json.dump({"written_by": "vivit_knn.tools.export"}, f)
  os.makedirs(tmp_path / "foreign")
  (tmp_path / "foreign" / "notes.txt").write_text("keep me")
  argv, needles = _bad_cases(tiny_run, str(tmp_path))[case]
  _one_line_exit_2(run_python(EXPORT + argv, check=False), *needles)
  assert not os.path.exists(tmp_path / "o")
  assert (tmp_path / "foreign" / "notes.txt").read_text() == "keep me"
  assert os.listdir(tmp_path / "mine") == ["export.json"]
