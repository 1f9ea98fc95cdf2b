"""Pretrained weights reach training through `python -m vivit_knn.main` (subprocesses).

Each test writes a tiny checkpoint in a published layout (tests/published.py), runs the
entry point on a synthetic config and reads the run's Orbax checkpoint back.
"""

import json
import os
import re

import numpy as np
import pytest

from tests import published
from tests.events import read_scalars
from tests.tiny import load_config, run_python
from vivit_knn.train.checkpoint import item_path, restore_on_host
from vivit_knn.weights.tree import flatten

MAIN = ["-m", "vivit_knn.main"]
ONE_STEP_AT_LR0 = ["--config.train.num_train_steps=1", "--config.optimizer.base_learning_rate=0",
                   "--config.optimizer.warmup_steps=0", "--config.train.eval_at_end=False"]


def _params(workdir, step):
  return flatten(restore_on_host(item_path(str(workdir), step))["params"])


def _vit_npz(tmp_path, config_name, num_classes=0, extra_layers=0):
  config = load_config(config_name)
  m = config.model
  arrays = published.vit_jax_arrays(m.hidden_size, m.num_heads, m.mlp_dim,
                                    m.num_layers + extra_layers,
                                    patch=m.patch_size[0],
                                    grid=config.dataset.image_size // m.patch_size[0],
                                    num_classes=num_classes)
  path = tmp_path / "vit.npz"
  np.savez(path, **arrays)
  return str(path), arrays


def _assert_blocks_from_npz(params, arrays, encoder="Transformer"):
  for ours, theirs in published.VIT_JAX_BLOCK_NAMES.items():
    for path, value in arrays.items():
      prefix = "Transformer/encoderblock_0/" + theirs + "/"
      if path.startswith(prefix):
        got = params[f"{encoder}/encoderblock_0/{ours}/" + path[len(prefix):]]
        np.testing.assert_array_equal(got, value)


@pytest.mark.parametrize("config_name", ["synthetic_timesformer", "synthetic_xvit"])
def test_init_from_vit_npz_through_main_puts_the_npz_blocks_in_the_checkpoint(tmp_path,
                                                                              config_name):
  npz, arrays = _vit_npz(tmp_path, config_name)
  work = tmp_path / "run"
  proc = run_python(MAIN + [f"--config=configs/{config_name}.py", f"--workdir={work}",
                            f"--config.init_from.checkpoint_path={npz}",
                            "--config.init_from.checkpoint_format=vit_npz"] + ONE_STEP_AT_LR0)
  params = _params(work, 1)
  _assert_blocks_from_npz(params, arrays)
  np.testing.assert_array_equal(params["cls"], arrays["cls"])
  kernel = params["embedding/kernel"]
  np.testing.assert_array_equal(kernel[kernel.shape[0] // 2], arrays["embedding/kernel"])
  if config_name == "synthetic_timesformer":  # temporal attention starts as the spatial one
    np.testing.assert_array_equal(
        params["Transformer/encoderblock_1/temporal_attn/query/kernel"],
        arrays["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"])
    assert not np.any(params["Transformer/encoderblock_0/temporal_fc/kernel"])
  # The summary is printed and written, by top-level module.
  assert "initialisation: checkpoints" in proc.stdout
  summary = json.loads((work / "init_summary.json").read_text())
  assert summary["source"] == "checkpoints"
  assert summary["sources"][0]["path"] == npz
  transformer = summary["modules"]["Transformer"]
  assert transformer["restored"] > 0 and summary["modules"]["embedding"]["inflated"] == (
      arrays["embedding/kernel"].size * params["embedding/kernel"].shape[0])
  assert summary["modules"]["output_projection"] == {
      "fresh": int(params["output_projection/kernel"].size + params["output_projection/bias"].size)}
  if config_name == "synthetic_timesformer":
    assert transformer["copied"] > 0 and transformer["zeroed"] > 0

  # Resume wins over init_from: a second run resumes (the file is gone, nothing re-reads it).
  os.remove(npz)
  proc = run_python(MAIN + [f"--config=configs/{config_name}.py", f"--workdir={work}",
                            f"--config.init_from.checkpoint_path={npz}",
                            "--config.init_from.checkpoint_format=vit_npz"]
                    + ONE_STEP_AT_LR0[1:] + ["--config.train.num_train_steps=2"])
  assert "initialisation: resume" in proc.stdout
  after = _params(work, 2)
  for path, value in params.items():
    np.testing.assert_array_equal(after[path], value)


def test_unusable_init_from_stops_before_training(tmp_path):
  work = tmp_path / "run"
  base = MAIN + ["--config=configs/synthetic_tiny.py", f"--workdir={work}"] + ONE_STEP_AT_LR0
  missing = run_python(base + ["--config.init_from.checkpoint_path=/does/not/exist.npz",
                               "--config.init_from.checkpoint_format=vit_npz"], check=False)
  assert missing.returncode == 2
  assert missing.stderr.strip() == (
      "error: init_from.checkpoint_path=/does/not/exist.npz does not exist")
  assert not work.exists()  # stopped before the workdir was made

  npz, arrays = _vit_npz(tmp_path, "synthetic_timesformer")  # width 64; synthetic_tiny is 16
  if os.geteuid() != 0:  # root reads any file
    os.chmod(npz, 0)
    unreadable = run_python(base + [f"--config.init_from.checkpoint_path={npz}",
                                    "--config.init_from.checkpoint_format=vit_npz"], check=False)
    os.chmod(npz, 0o644)
    assert unreadable.returncode == 2 and not work.exists()
    assert f"init_from.checkpoint_path={npz} cannot be read" in unreadable.stderr

  # A file of another model: a short error, and a file listing every array.
  wrong = run_python(base + [f"--config.init_from.checkpoint_path={npz}",
                             "--config.init_from.checkpoint_format=vit_npz"], check=False)
  assert wrong.returncode == 2
  lines = wrong.stderr.strip().splitlines()
  assert len(lines) <= 3 and "does not match" in lines[0] and "wrong shape" in lines[0]
  with open(lines[-1].rsplit(": ", 1)[1]) as f:
    listing = f.read()
  assert not re.search(r"(?<!\S)(\S+) \(from \1\)", wrong.stderr + listing)  # no X (from X)
  assert f"{len(arrays)} arrays of the checkpoint:" in listing
  assert "  embedding/kernel (8, 8, 3, 64)\n" in listing  # the file's own shape
  assert "arrays of the model:" in listing and "  embedding/kernel: got" in listing

  bad_format = run_python(base + [f"--config.init_from.checkpoint_path={npz}",
                                  "--config.init_from.checkpoint_format=pickle"], check=False)
  assert bad_format.returncode == 2 and "init_from.checkpoint_format" in bad_format.stderr


@pytest.mark.parametrize("config_name,field", [
    ("k400_cast", "init_from.spatial_expert.checkpoint_path"),
    ("k400_timesformer", "init_from.checkpoint_path"),
    ("ucf101_dk", "init_from.checkpoint_path"),
])
def test_paper_configs_refuse_to_start_without_their_checkpoints(tmp_path, config_name, field):
  proc = run_python(MAIN + [f"--config=configs/{config_name}.py", f"--workdir={tmp_path}"],
                    check=False)
  assert proc.returncode == 2
  assert field in proc.stderr and "init_from.required=False" in proc.stderr


def _cast_experts(tmp_path):
  from safetensors.numpy import save_file
  m = load_config("synthetic_cast").model
  grid = load_config("synthetic_cast").dataset.image_size // m.patch_size[0]
  clip = published.clip_state_dict(m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers,
                                   m.patch_size[0], grid)
  mae = published.videomae_state_dict(m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers,
                                       m.patch_size[0], m.patch_size[2])
  save_file(clip, str(tmp_path / "clip.safetensors"))
  save_file(mae, str(tmp_path / "videomae.safetensors"))
  return m, clip, mae, [
      f"--config.init_from.spatial_expert.checkpoint_path={tmp_path / 'clip.safetensors'}",
      f"--config.init_from.temporal_expert.checkpoint_path={tmp_path / 'videomae.safetensors'}"]


def test_cast_experts_from_the_config_are_loaded_and_stay_frozen(tmp_path):
  pytest.importorskip("safetensors")
  m, clip, mae, flags = _cast_experts(tmp_path)
  work = tmp_path / "run"
  paper_patterns = repr(tuple(load_config("k400_cast").optimizer.trainable_patterns))
  run_python(MAIN + ["--config=configs/synthetic_cast.py", f"--workdir={work}",
                            "--config.train.num_train_steps=3", "--config.train.eval_at_end=False",
                            "--config.optimizer.warmup_steps=0", "--config.train.log_every_steps=1",
                            f"--config.optimizer.trainable_patterns={paper_patterns}"] + flags)
  params = _params(work, 3)
  for prefix, expected in (("spatial", published.expected_clip_expert(clip, m.num_heads)),
                           ("temporal", published.expected_videomae_expert(mae, m.num_heads))):
    for path, value in expected.items():
      np.testing.assert_array_equal(params[f"{prefix}/{path}"], value, err_msg=path)
  # The zero-initialised B-CAST up-projection trained, so steps did happen.
  assert np.any(params["cross_block_0/cross_s_up/kernel"])
  summary = json.loads((work / "init_summary.json").read_text())
  assert summary["modules"]["spatial"]["restored"] > 0
  assert summary["modules"]["temporal"]["restored"] > 0
  assert "fresh" in summary["modules"]["spatial"]  # its adapters



def test_frozen_parameters_are_left_out_of_the_gradient_norm(tmp_path):
  """The head is frozen: the logged gradient norm leaves it out.

  At step 1 the zero-initialised head is the only parameter with a gradient (everything
  below it gets zero through the zero head), so the logged norm must be the trainable
  part's, zero, while the norm over all parameters is the head's, well above zero.
  """
  work = tmp_path / "run"
  patterns = ("^(?!output_projection/)",)
  run_python(MAIN + ["--config=configs/synthetic_tiny.py", f"--workdir={work}",
                     "--config.train.num_train_steps=1", "--config.train.eval_at_end=False",
                     "--config.train.log_every_steps=1", "--config.optimizer.warmup_steps=0",
                     f"--config.optimizer.trainable_patterns={patterns!r}"])
  logged = dict(read_scalars(str(work / "train"))["train/grad_norm"])[1]
  trainable_norm, full_norm = _first_step_grad_norms("synthetic_tiny", patterns)
  assert logged == pytest.approx(trainable_norm, abs=1e-6)
  assert full_norm > 0.1  # what would have been logged with the frozen head counted


def _first_step_grad_norms(config_name, patterns):
  """(norm over trainable leaves, norm over all leaves) of step 1's gradient, recomputed here
  from the run's first batch and initial weights (the same seeds as the trainer's)."""
  import re

  import jax
  import jax.numpy as jnp

  from vivit_knn.train import initialisation, losses
  from vivit_knn.train.experiment import build_experiment

  config = load_config(config_name)
  config.optimizer.trainable_patterns = patterns
  config.optimizer.warmup_steps = 0
  exp = build_experiment(config)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  params, _ = initialisation.initial_params(exp, init_rng)
  batch = next(exp.dataset.train_batches(config.train.global_batch_size, start_step=0,
                                         seed=config.seed))
  targets = losses.one_hot(batch["label"], exp.num_classes)
  _, dropout_rng, _ = jax.random.split(jax.random.fold_in(train_rng, 0), 3)

  def loss_fn(p):
    logits, _ = exp.model.apply({"params": p}, batch["inputs"], train=True,
                                rngs={"dropout": jax.random.fold_in(dropout_rng, 0)})
    return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1))

  grads = jax.grad(loss_fn)(params)
  compiled = [re.compile(p) for p in patterns]
  sq_all = sq_train = 0.0
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    name = "/".join(str(k.key) for k in path)
    sq = float(jnp.sum(jnp.square(g)))
    sq_all += sq
    if any(c.search(name) for c in compiled):
      sq_train += sq
  return sq_train ** 0.5, sq_all ** 0.5


def test_ek100_cast_trains_with_the_verb_noun_objective(tmp_path):
  work = tmp_path / "run"
  run_python(MAIN + ["--config=configs/synthetic_cast.py", f"--workdir={work}",
                     "--config.train.num_train_steps=2", "--config.train.eval_at_end=False",
                     "--config.train.log_every_steps=1", "--config.optimizer.warmup_steps=0",
                     "--config.dataset.num_classes=4", "--config.model.cast.num_verbs=2",
                     "--config.model.cast.num_nouns=2"])
  scalars = read_scalars(str(work / "train"))
  assert {"train/loss/verb_ce", "train/loss/noun_ce"} <= set(scalars)
  for (_, total), (_, verb), (_, noun) in zip(scalars["train/loss"], scalars["train/loss/verb_ce"],
                                              scalars["train/loss/noun_ce"]):
    assert total == pytest.approx(verb + noun, rel=1e-5)
    assert verb > 0 and noun > 0


def test_tsd_student_starts_from_an_image_vit(tmp_path):
  from tests.test_resnet import torchvision_state

  # One block more than the student, and a classifier: both skipped, and counted.
  npz, arrays = _vit_npz(tmp_path, "synthetic_tsd", num_classes=7, extra_layers=1)
  deepest = f"Transformer/encoderblock_{load_config('synthetic_tsd').model.num_layers}/"
  teacher = tmp_path / "r18.npz"
  np.savez(teacher, **torchvision_state(18, width=64, classes=4))
  work = tmp_path / "run"
  flags = [f"--config.init_from.checkpoint_path={npz}",
           "--config.init_from.checkpoint_format=vit_npz",
           "--config.distill.stage1.checkpoint_format=torchvision"]
  absent = run_python(MAIN + ["--config=configs/synthetic_tsd.py", f"--workdir={work}",
                              f"--config.distill.stage1.checkpoint_path={tmp_path / 'no.pth'}"]
                      + flags + ONE_STEP_AT_LR0, check=False)
  assert absent.returncode == 2 and not work.exists()
  assert f"distill.stage1.checkpoint_path={tmp_path / 'no.pth'} does not exist" in absent.stderr

  proc = run_python(MAIN + ["--config=configs/synthetic_tsd.py", f"--workdir={work}",
                            f"--config.distill.stage1.checkpoint_path={teacher}"]
                    + flags + ONE_STEP_AT_LR0)
  params = _params(work, 1)
  _assert_blocks_from_npz(params, arrays)  # block 0 is an MHCA block: its attention too
  summary = json.loads((work / "init_summary.json").read_text())
  assert set(summary["modules"]["aligner"]) == {"fresh"}
  assert set(summary["modules"]["branch_0"]) == {"fresh"}
  skipped = [k for k in arrays if k.startswith(("head/", deepest))]
  assert summary["skipped_source_arrays"] == len(skipped) > 2
  assert f"skipped source arrays: {len(skipped)} (" in proc.stdout
  sources = {s["field"]: s["path"] for s in summary["sources"]}
  assert sources["init_from.checkpoint_path"] == npz
  assert sources["distill.stage1.checkpoint_path"] == str(teacher)
  assert f"distill.stage1.checkpoint_path={teacher} [torchvision]" in proc.stdout


def test_eval_on_an_empty_workdir_scores_a_released_classifier(tmp_path):
  """A scenic-format video checkpoint with its head: `--mode=eval` evaluates it as it is."""
  import jax
  import jax.numpy as jnp

  from vivit_knn.data.registry import build_dataset
  from vivit_knn.models.registry import build_model

  config = load_config("synthetic_tiny")
  info = build_dataset(config.dataset).info
  model = build_model(config.model, info.num_classes)
  x = jnp.zeros((1,) + tuple(info.input_shape))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(np.float32), shapes)
  ckpt_dir = tmp_path / "released"
  published.write_scenic_checkpoint(str(ckpt_dir), params)

  work = tmp_path / "empty"
  flags = [f"--config.init_from.checkpoint_path={ckpt_dir}",
           "--config.init_from.checkpoint_format=scenic"]
  proc = run_python(MAIN + ["--config=configs/synthetic_tiny.py", f"--workdir={work}",
                            "--mode=eval", "--config.init_from.restore_head=True"] + flags)
  assert "evaluating the configured initial weights" in proc.stdout
  assert not (work / "checkpoints").exists()
  result = json.loads((work / "eval" / "results_step_0_1x1.json").read_text())

  # The same numbers from the model built on the file's arrays, computed here.
  dataset = build_dataset(config.dataset)
  total, correct, count = 0.0, 0, 0
  for batch in dataset.eval_batches(config.eval.global_batch_size):
    logits, _ = model.apply({"params": params}, batch["inputs"], train=False)
    logits = np.asarray(logits, np.float64)
    keep = np.asarray(batch["mask"], bool)
    labels = np.asarray(batch["label"])[keep]
    logits = logits[keep]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    total += -logp[np.arange(len(labels)), labels].sum()
    correct += int((logits.argmax(-1) == labels).sum())
    count += len(labels)
  assert result["num_examples"] == count
  assert result["loss"] == pytest.approx(total / count, rel=1e-4)
  assert result["top1"] == pytest.approx(correct / count, abs=1e-6)

  # Without restore_head the head is fresh, so the loss differs.
  other = run_python(MAIN + ["--config=configs/synthetic_tiny.py", f"--workdir={tmp_path / 'e2'}",
                             "--mode=eval"] + flags)
  fresh = json.loads((tmp_path / "e2" / "eval" / "results_step_0_1x1.json").read_text())
  assert "initialisation: checkpoints" in other.stdout
  assert abs(fresh["loss"] - result["loss"]) > 1e-3
