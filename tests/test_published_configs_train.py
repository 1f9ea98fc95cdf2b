"""The seed experiments on Kinetics, Something-Something v2 and EPIC-KITCHENS-100 train
on the converter's output.

Each dataset is written in its published layout (`tests/published_datasets.py`) and
converted once through `python -m vivit_knn.data.convert`. Every config in `configs/`
that reads it then trains 2 steps and evaluates through `python -m vivit_knn.main`,
shrunk on the command line to a tiny model at 32x32 (the family's fields in
`FAMILIES`); everything else is the config's own (frame sampling, test views,
optimiser, label source). The records are read back with TensorFlow to count the
splits and, for EPIC-KITCHENS, to get each clip's verb and noun.
"""

import dataclasses
import glob
import json
import os
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

from tests import published_datasets as published
from tests.events import read_scalars
from tests.tiny import load_config, run_python
from vivit_knn.models.resnet import stage_channels
from vivit_knn.train.checkpoint import item_path

MAIN = ["-m", "vivit_knn.main"]
STEPS = 2
TEACHER_DEPTH = 18  # the smallest stage-1 ResNet

# Every run: 32x32 crops, batches of 2, 2 steps from random weights (no checkpoints exist
# here), evaluation at the end. The configs' warmup epochs would outlast 2 steps on a few
# records, so there is none.
COMMON = {
    "dataset.image_size": 32,
    "train.global_batch_size": 2,
    "eval.global_batch_size": 2,
    "train.num_train_steps": STEPS,
    "optimizer.warmup_epochs": 0.0,
    "init_from.required": False,
    "train.eval_at_end": True,
}
_TINY_VIT = {"model.hidden_size": 32, "model.num_heads": 2, "model.mlp_dim": 64,
             "model.num_layers": 1, "dataset.num_frames": 4}
FAMILIES = {
    "timesformer": {**_TINY_VIT, "model.patch_size": (16, 16, 1)},
    "xvit": {**_TINY_VIT, "model.patch_size": (16, 16, 1)},
    "cast": {**_TINY_VIT, "model.patch_size": (16, 16, 2), "model.cast.cross_dim": 16,
             "model.cast.adapter_dim": 8},
    # Step 1 is stage 1 (a random ResNet-18 teacher), step 2 stage 2 (a tiny TimeSformer
    # trained in the test).
    "student": {**_TINY_VIT, "model.num_layers": 2, "model.patch_size": (16, 16, 2),
                "distill.stage1_steps": 1, "distill.stage1.depth": TEACHER_DEPTH,
                "distill.stage1.checkpoint_format": "none"},
}
# name: (dataset, family, the config's own overrides)
CONFIGS = {
    "k400_timesformer": ("kinetics", "timesformer", {}),
    "k400_xvit": ("kinetics", "xvit", {}),
    "k400_cast": ("kinetics", "cast", {}),
    "k400_tsd_fad": ("kinetics", "student", {
        "model.student.mhca_layers": 1, "train.log_every_steps": 1,
        "model.student.aligner_features": stage_channels(TEACHER_DEPTH)[-1]}),
    "ssv2_cast": ("ssv2", "cast", {}),
    # One log window spans the change of stage: its stage-1 term is averaged over step 1.
    "ssv2_tsd_fpld": ("ssv2", "student", {"model.student.branch_heads": 2,
                                          "train.log_every_steps": 2}),
    "ek100_cast": ("ek100", "cast", {"eval.save_logits": True}),
}
# The stage-1 term each distillation method adds to its loss.
STAGE1_TERMS = {"k400_tsd_fad": "fad", "ssv2_tsd_fpld": "ofa"}

TEACHER_CONFIG = """from tests.tiny import load_config


def get_config():
  config = load_config({name!r})
{assignments}
  return config
"""


@dataclasses.dataclass
class Converted:
  """A converted dataset: the records' folder, their contexts by split, the class counts."""

  out: str
  records: dict
  num_classes: int
  overrides: dict


def _contexts(out, split):
  """The context features (``{key: int or str}``) of a split's records, in shard order."""
  files = sorted(tf.io.gfile.glob(os.path.join(out, f"{split}.tfrecord-*")))
  found = []
  for raw in tf.data.TFRecordDataset(files):
    example = tf.train.SequenceExample.FromString(raw.numpy())
    context = {}
    for key, feature in example.context.feature.items():
      value = getattr(feature, feature.WhichOneof("kind")).value[0]
      context[key] = value.decode() if isinstance(value, bytes) else int(value)
    found.append(context)
  return found


def _convert(base, fmt, data, num_classes, overrides=None):
  out = str(base / "records")
  run_python(["-m", "vivit_knn.data.convert", f"--format={fmt}",
              f"--annotations={data.annotations}", f"--root={data.root}", f"--out={out}",
              "--short_side=32", "--num_workers=1"], timeout=300)
  records = {split: _contexts(out, split) for split in ("train", "test")}
  assert records["train"] and records["test"]
  return Converted(out, records, num_classes, overrides or {})


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
  base = tmp_path_factory.mktemp("kinetics")
  data = published.write_kinetics(str(base / "k400"))
  return _convert(base, "kinetics", data, len(data.class_names))


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
  base = tmp_path_factory.mktemp("ssv2")
  data = published.write_ssv2(str(base / "ssv2"))
  with open(data.json_files["labels"]) as f:
    num_classes = len(json.load(f))
  return _convert(base, "ssv2", data, num_classes)


@pytest.fixture(scope="module")
def ek100(tmp_path_factory):
  base = tmp_path_factory.mktemp("ek100")
  data = published.write_ek100(str(base / "epic"))
  num_verbs, num_nouns = len(data.verbs), len(data.nouns)
  return _convert(base, "ek100", data, num_verbs * num_nouns,
                  {"model.cast.num_verbs": num_verbs, "model.cast.num_nouns": num_nouns})


def _flags(overrides):
  return [f"--config.{key}={value}" for key, value in overrides.items()]


def _train_teacher(name, data, overrides, tmp_path):
  """The stage-2 teacher: the student config's teacher config with the tiny TimeSformer
  model, trained for one step on the same records; returns (config file, workdir)."""
  teacher = os.path.splitext(os.path.basename(load_config(name).distill.stage2.config_file))[0]
  model = {k: v for k, v in FAMILIES["timesformer"].items() if k.startswith("model.")}
  config_file = tmp_path / "teacher_config.py"
  config_file.write_text(TEACHER_CONFIG.format(
      name=teacher, assignments="\n".join(f"  config.{k} = {v!r}" for k, v in model.items())))
  workdir = tmp_path / "teacher"
  # The teacher sees the student's clips: the same frames, crop and classes.
  run = {k: v for k, v in overrides.items() if not k.startswith(("model.", "distill."))}
  run.update({"train.num_train_steps": 1, "train.eval_at_end": False})
  run_python(MAIN + [f"--config={config_file}", f"--workdir={workdir}",
                     f"--config.dataset.data_dir={data.out}"] + _flags(run), timeout=300)
  assert item_path(str(workdir), 1).is_dir()
  return str(config_file), str(workdir)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_seed_config_trains_and_evaluates_on_the_converted_records(name, request, tmp_path):
  source, family, own = CONFIGS[name]
  data = request.getfixturevalue(source)
  train, test = data.records["train"], data.records["test"]
  overrides = {**COMMON, **FAMILIES[family], "dataset.num_classes": data.num_classes,
               **data.overrides, **own}
  if family == "student":
    config_file, teacher = _train_teacher(name, data, overrides, tmp_path)
    overrides.update({"distill.stage2.config_file": config_file,
                      "distill.stage2.workdir": teacher})
  work = tmp_path / "run"
  proc = run_python(MAIN + [f"--config=configs/{name}.py", f"--workdir={work}",
                            f"--config.dataset.data_dir={data.out}"] + _flags(overrides),
                    check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]

  steps = sorted(int(d) for d in os.listdir(work / "checkpoints") if d.isdigit())
  assert steps == [STEPS] and item_path(str(work), STEPS).is_dir()

  # The run saw every converted record: the train split in its summary, the test split
  # in its evaluation.
  summary = json.loads((work / "run_summary.json").read_text())
  assert summary["splits"]["train"]["listed"] == len(train)
  assert summary["splits"]["eval"]["listed"] == len(test)
  assert summary["total_steps"] == STEPS
  assert re.search(rf"train split +{len(train)} listed", proc.stdout), proc.stdout
  found = glob.glob(str(work / "eval" / f"results_step_{STEPS}_*.json"))
  assert len(found) == 1, os.listdir(work / "eval")
  results = json.loads(pathlib.Path(found[0]).read_text())
  assert results["num_examples"] == len(test)
  assert results["videos"] == {"listed": len(test), "evaluated": len(test), "skipped": 0}
  assert f"examples={len(test)}" in proc.stdout

  # What the config file sets and the command line leaves alone is what the run used.
  config = load_config(name)
  stored = json.loads((work / "config.json").read_text())["config"]["dataset"]
  for key in ("frame_sampling", "frame_stride", "label_source", "num_test_clips",
              "num_test_crops"):
    assert stored[key] == config.dataset[key], key
  assert results["views"] == {"clips": config.dataset.num_test_clips,
                              "crops": config.dataset.num_test_crops}
  assert len(results["per_class_accuracy"]) == data.num_classes

  if family == "student":
    # Step 1 learnt from the stage-1 teacher with its extra term, step 2 from the
    # stage-2 teacher without it.
    logged = read_scalars(work / "train")
    if name == "ssv2_tsd_fpld":  # one window over both stages
      assert [s for s, _ in logged[f"train/loss/{STAGE1_TERMS[name]}"]] == [2]
      assert [s for s, _ in logged["train/loss/kd"]] == [2]
    else:
      assert [s for s, _ in logged[f"train/loss/{STAGE1_TERMS[name]}"]] == [1]
      assert [s for s, _ in logged["train/loss/kd"]] == [1, 2]
  if name == "ek100_cast":
    _assert_actions(work, proc.stdout, results, test, data.overrides["model.cast.num_nouns"])


def _assert_actions(work, stdout, results, test, num_nouns):
  """Verb, noun and action top-1 reported; the labels were the records' actions."""
  eval_line = next(line for line in stdout.splitlines() if line.startswith("eval:"))
  for key in ("verb_top1", "noun_top1", "action_top1"):
    assert key in results
    assert f" {key}=" in eval_line
  assert results["action_top1"] == results["top1"]
  saved = np.load(glob.glob(str(work / "eval" / f"logits_step_{STEPS}_*.npz"))[0])
  assert sorted(saved["index"].tolist()) == list(range(len(test)))
  actions = [test[i]["clip/label/verb/index"] * num_nouns + test[i]["clip/label/noun/index"]
             for i in saved["index"]]
  np.testing.assert_array_equal(saved["labels"], actions)
  assert saved["logits"].shape == (len(test), len(results["per_class_accuracy"]))
