"""Two-stage distillation: student/aligner shapes, frozen teachers, stages, kill/resume."""

import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.events import read_scalars
from tests.test_resnet import torchvision_state
from tests.tiny import load_config, run_python
from vivit_knn import config as config_lib
from vivit_knn.models import resnet
from vivit_knn.models.student import VideoStudent, export_params
from vivit_knn.train import sharding, steps, trainer
from vivit_knn.train.distill import STAGE1, STAGE2, DistillObjective
from vivit_knn.train.experiment import build_experiment


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory):
  """A synthetic Dk-ViViT (`configs/synthetic_dk.py`) trained for 2 steps: the stage-2 teacher."""
  workdir = tmp_path_factory.mktemp("teacher")
  config = load_config("synthetic_dk")
  config.train.num_train_steps = 2
  config.train.global_batch_size = 8
  config.optimizer.warmup_steps = 1
  config.train.eval_at_end = False
  trainer.train(config, str(workdir))
  return str(workdir)


def _student_config(teacher_workdir, method="fad", stage1_steps=2, total=4):
  """`configs/synthetic_tsd.py`, small and short, teaching from `teacher_workdir` in stage 2."""
  config = load_config("synthetic_tsd")
  config.dataset.num_train = 64
  config.train.global_batch_size = 4
  config.train.num_train_steps = total
  config.train.eval_at_end = False
  config.optimizer.warmup_steps = 1
  config.distill.method = method
  config.distill.stage1_steps = stage1_steps
  config.distill.stage2.workdir = teacher_workdir
  return config


def test_aligner_output_matches_resnet101_layer4_for_a_224_vit_s():
  clips = jax.ShapeDtypeStruct((2, 8, 224, 224, 3), jnp.float32)
  student = VideoStudent(num_classes=400, mhca_layers=8, branch_heads=4,
                         aligner_features=resnet.stage_channels(101)[-1])
  variables = jax.eval_shape(lambda x: student.init(jax.random.key(0), x), clips)
  _, inter = jax.eval_shape(
      lambda v, x: student.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)}),
      variables, clips)
  teacher = resnet.ResNet(num_classes=400, depth=101)
  frames = jax.ShapeDtypeStruct((2 * 8, 224, 224, 3), jnp.float32)
  t_vars = jax.eval_shape(lambda x: teacher.init(jax.random.key(0), x), frames)
  _, t_feats = jax.eval_shape(lambda v, x: teacher.apply(v, x, train=False), t_vars, frames)
  # Per tubelet (2 frames) the aligned tokens have the teacher's layer4 shape.
  assert t_feats["layer4"].shape == (16, 7, 7, 2048)
  assert inter["aligned"].shape == (2, 4) + t_feats["layer4"].shape[1:]
  assert inter["branch_logits"].shape == (4, 2, 400)
  # ViT-S: 12 layers, 6 heads, width 384; the first 8 layers carry MHCA terms.
  blocks = variables["params"]["Transformer"]
  assert sum(k.startswith("encoderblock_") for k in blocks) == 12
  assert blocks["encoderblock_0"]["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape == (
      384, 6, 64)
  with_mhca = [i for i in range(12) if "RelativePosition_0" in blocks[f"encoderblock_{i}"]]
  assert with_mhca == list(range(8))


def test_eval_and_export_drop_branches_and_aligner():
  student = VideoStudent(num_classes=4, hidden_size=32, num_heads=4, mlp_dim=64, num_layers=4,
                         patch_size=(8, 8, 2), mhca_layers=2, branch_heads=4,
                         aligner_features=16)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)), jnp.float32)
  params = jax.jit(student.init)(jax.random.key(0), x)["params"]
  assert {"branch_0", "branch_3", "aligner"} <= set(params)
  evaluate = jax.jit(lambda p: student.apply({"params": p}, x, train=False))
  logits, inter = evaluate(params)
  assert "branch_logits" not in inter and "aligned" not in inter
  exported = export_params(params)
  assert not any(k.startswith(("branch_", "aligner")) for k in exported)
  again, _ = evaluate(exported)
  np.testing.assert_array_equal(logits, again)


def test_rematerialised_student_has_the_same_params_and_gradients():
  common = dict(num_classes=4, hidden_size=32, num_heads=4, mlp_dim=64, num_layers=2,
                patch_size=(8, 8, 2), mhca_layers=1)
  plain, remat = VideoStudent(**common), VideoStudent(remat=True, **common)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 16, 16, 3)), jnp.float32)
  params = jax.jit(plain.init)(jax.random.key(0), x)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(
      jax.eval_shape(remat.init, jax.random.key(0), x)["params"])

  def grad(model):
    def loss(p):
      logits, inter = model.apply({"params": p}, x, train=True)
      return jnp.sum(logits) + jnp.sum(inter["encoded"] ** 2)
    return jax.jit(jax.grad(loss))(params)

  g_plain, g_remat = grad(plain), grad(remat)
  rel_pos = g_plain["Transformer"]["encoderblock_0"]["RelativePosition_0"]
  assert np.abs(rel_pos["delta"]).sum() > 0 and np.abs(rel_pos["alpha"]).sum() > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               g_plain, g_remat)


def test_teacher_params_unchanged_and_terms_reported(teacher_workdir):
  config = _student_config(teacher_workdir, stage1_steps=2, total=4)
  exp = build_experiment(config)
  assert [exp.objective.phase(s) for s in range(4)] == [STAGE1, STAGE1, STAGE2, STAGE2]
  state = exp.init_state(jax.random.key(0))
  start_params = jax.device_get(state.params)
  batches = exp.dataset.train_batches(config.train.global_batch_size)
  rng = jax.random.key(1)
  for phase, want_terms in ((STAGE1, {"ce", "kd", "fad"}), (STAGE2, {"ce", "kd"})):
    frozen = exp.objective.init_frozen(exp, phase)
    before = jax.tree.map(np.array, jax.device_get(frozen))
    if phase == STAGE1:  # the ResNet runs on its running statistics, which stay frozen too
      assert set(frozen) == {"params", "batch_stats"}
    train_step = steps.make_train_step(exp, frozen, phase)
    for _ in range(2):
      state, metrics = train_step(state, sharding.shard_batch(next(batches), exp.mesh), rng,
                                  frozen)
    assert {k[len("loss/"):] for k in metrics if k.startswith("loss/")} == want_terms
    assert all(np.isfinite(float(v)) for v in metrics.values())
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(frozen), before)
  # ...while the student did train.
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), start_params,
                       jax.device_get(state.params))
  assert any(jax.tree.leaves(moved))


def test_stage1_teacher_maps_are_the_resnet_on_each_frame():
  """`frame_features` (the stage-1 teacher's outputs, which 'fad' averages per tubelet)
  holds frame (b, t) at [b, t]; its logits are the mean over frames."""
  b, t = 2, 4
  clips = np.random.default_rng(0).normal(0, 1, (b, t, 32, 32, 3)).astype(np.float32)
  teacher = resnet.ResNet(num_classes=4, depth=18, width=4)
  # Random variables drawn in numpy (JAX's initialisers compile one RNG program per shape).
  rng = np.random.default_rng(1)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if leaf.ndim > 1:  # conv / dense kernels, fan-in scaled
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
    if "var" in name or "scale" in name:
      return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0, 0.1, leaf.shape)

  abstract = jax.eval_shape(lambda x: teacher.init(jax.random.key(0), x), clips[0])
  variables = jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.asarray(draw(p, a), jnp.float32), abstract)
  logits, maps = jax.jit(lambda v, x: resnet.frame_features(teacher, v, x))(
      variables, jnp.asarray(clips))
  # The reference runs the frames time-major in one batch, then puts them back by index.
  frame_logits, feats = jax.jit(lambda v, x: teacher.apply(v, x, train=False))(
      variables, jnp.asarray(clips.transpose(1, 0, 2, 3, 4).reshape((t * b,) + clips.shape[2:])))
  frame_logits = np.asarray(frame_logits).reshape(t, b, -1)
  layer4 = np.asarray(feats["layer4"])
  layer4 = layer4.reshape((t, b) + layer4.shape[1:]).transpose(1, 0, 2, 3, 4)
  assert maps.shape == layer4.shape == (b, t, 1, 1, 32)
  assert np.abs(layer4[0] - layer4[1]).mean() > 1e-3 and np.ptp(frame_logits, axis=0).max() > 1e-3
  np.testing.assert_allclose(maps, layer4, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits, frame_logits.mean(axis=0), rtol=1e-4, atol=1e-6)


def test_fpld_reports_one_ofa_term_per_branch(teacher_workdir):
  config = _student_config(teacher_workdir, method="fpld")
  exp = build_experiment(config)
  frozen = exp.objective.init_frozen(exp, STAGE1)
  batch = next(exp.dataset.train_batches(2))
  params = jax.jit(exp.init_params)(jax.random.key(0))

  @jax.jit
  def loss_and_terms(params, frozen, inputs, labels):
    logits, inter = exp.model.apply({"params": params}, inputs, train=True,
                                    rngs={"dropout": jax.random.key(0)})
    return exp.objective(frozen, phase=STAGE1, inputs=inputs,
                         targets=jax.nn.one_hot(labels, exp.num_classes), logits=logits,
                         intermediates=inter, step=jnp.int32(0), rng=jax.random.key(0))

  loss, terms = loss_and_terms(params, frozen, batch["inputs"], batch["label"])
  assert set(terms) == {"ce", "kd", "ofa", "ofa_0", "ofa_1", "ofa_2", "ofa_3"}
  d = config.distill
  want = d.alpha * terms["ce"] + (1 - d.alpha) * terms["kd"] + d.beta * terms["ofa"]
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(terms["ofa"], np.mean([terms[f"ofa_{i}"] for i in range(4)]),
                             rtol=1e-6)


def test_stage1_teacher_loads_a_torchvision_state_dict(tmp_path, teacher_workdir):
  state = torchvision_state(18, width=64, classes=4)
  np.savez(tmp_path / "r18.npz", **state)
  config = _student_config(teacher_workdir)
  config.distill.stage1.checkpoint_format = "torchvision"
  config.distill.stage1.checkpoint_path = str(tmp_path / "r18.npz")
  exp = build_experiment(config)
  frozen = jax.device_get(exp.objective.init_frozen(exp, STAGE1))
  np.testing.assert_array_equal(frozen["params"]["conv1"]["kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(frozen["batch_stats"]["layer4_1"]["bn2"]["var"],
                                state["layer4.1.bn2.running_var"])
  config.distill.stage1.depth = 34
  with pytest.raises(ValueError, match="distill.stage1.depth=34"):
    exp.objective.init_frozen(build_experiment(config), STAGE1)
  np.savez(tmp_path / "r18_1000.npz", **torchvision_state(18, width=64, classes=1000))
  config.distill.stage1.depth = 18
  config.distill.stage1.checkpoint_path = str(tmp_path / "r18_1000.npz")
  with pytest.raises(ValueError, match="(?s)distill.stage1.checkpoint_path.*fc"):
    exp.objective.init_frozen(build_experiment(config), STAGE1)


def test_stage1_length_in_epochs_and_config_checks(teacher_workdir):
  config = _student_config(teacher_workdir, stage1_steps=0)
  config.distill.stage1_epochs = 1.5
  objective = DistillObjective(config)  # 64 examples / batch 4 -> 16 steps per epoch
  assert objective.stage1_steps() == 24
  assert objective.phase(23) == STAGE1 and objective.phase(24) == STAGE2

  def error(**changes):
    cfg = _student_config(teacher_workdir)
    for path, value in changes.items():
      *parents, leaf = path.split("__")
      node = cfg
      for p in parents:
        node = node[p]
      node[leaf] = value
    with pytest.raises(ValueError) as info:
      config_lib.validate(cfg)
    return str(info.value)

  assert "model.student.aligner_features" in error(model__student__aligner_features=64)
  assert "model.student.branch_heads" in error(distill__method="fpld",
                                               model__student__branch_heads=0)
  assert "distill.stage2.workdir" in error(distill__stage2__workdir="")
  assert "distill.stage1.checkpoint_path" in error(distill__stage1__checkpoint_format="torchvision")
  assert "distill.method" in error(distill__method="hint")
  assert "distill.alpha" in error(distill__alpha=1.5)


def test_paper_configs_validate_once_the_teachers_are_given():
  fad, fpld = load_config("k400_tsd_fad"), load_config("ssv2_tsd_fpld")
  for config in (fad, fpld):
    m = config.model
    assert (m.name, m.num_layers, m.num_heads, m.hidden_size) == ("student", 12, 6, 384)
    assert config.distill.stage1_epochs == 100 and config.train.num_epochs == 400
    with pytest.raises(ValueError, match="distill.stage1.checkpoint_path"):
      config_lib.validate(config)
    config.distill.stage1.checkpoint_path = "resnet101.pth"
    with pytest.raises(ValueError, match="distill.stage2.workdir"):
      config_lib.validate(config)
    config.distill.stage2.workdir = "runs/teacher"
    config_lib.validate(config, (8, 224, 224, 3))
  assert fad.distill.method == "fad" and fad.model.student.mhca_layers == 8
  assert fad.model.student.aligner_features == 2048
  assert fpld.distill.method == "fpld" and fpld.model.student.branch_heads == 4
  assert fpld.distill.eta == pytest.approx(1.1)


def _params(workdir, step):
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore((workdir / "checkpoints" / str(step) / "default").absolute())
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def test_kill_in_stage2_resumes_in_stage2_bitwise(tmp_path, teacher_workdir):
  args = ["--config=configs/synthetic_tsd.py",
          "--config.distill.method=fpld", "--config.distill.stage1_steps=3",
          f"--config.distill.stage2.workdir={teacher_workdir}",
          "--config.train.num_train_steps=8", "--config.train.checkpoint_every_steps=4",
          "--config.train.log_every_steps=1", "--config.train.eval_at_end=False",
          "--config.train.global_batch_size=4", "--config.dataset.num_train=64",
          "--config.optimizer.warmup_steps=1", "--config.loss.mixup_alpha=0.2",
          "--config.model.dropout_rate=0.1"]
  # The three runs compile the same steps: share the compilations through JAX's cache.
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  stage1_teacher = "random ResNet-18"  # logged when the stage-1 teacher is built
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  main, killed_after_6 = ["-m", "vivit_knn.main"], ["-m", "tests.faults", "kill_after_step=6"]
  proc = run_python(main + args + [f"--workdir={straight}"], env)
  assert stage1_teacher in proc.stderr

  # Killed after step 6 (stage 2 since step 4): the step-4 checkpoint survives.
  proc = run_python(killed_after_6 + args + [f"--workdir={killed}"], env, check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr
  assert sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
  resumed = run_python(main + args + [f"--workdir={killed}"], env)
  assert stage1_teacher not in resumed.stderr  # resumed straight into stage 2

  logged = read_scalars(straight / "train")
  assert [s for s, _ in logged["train/loss/ofa"]] == [1, 2, 3]
  assert [s for s, _ in logged["train/loss/kd"]] == list(range(1, 9))
  logged = read_scalars(killed / "train")
  assert {5, 6, 7, 8} <= {s for s, _ in logged["train/loss/kd"]}
  assert all(s <= 3 for s, _ in logged.get("train/loss/ofa", []))

  a, b = _params(straight, 8), _params(killed, 8)
  assert len(a) == len(b) > 10
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
