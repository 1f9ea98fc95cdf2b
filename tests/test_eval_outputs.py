"""Eval reports are named by step and views, count skipped videos, and scale to many classes.

One tiny model is trained (in a subprocess) on a 6-class UCF101 folder whose test
split holds one corrupt video; the end-of-training eval uses 1 clip x 1 crop, then
`--mode=eval` rescores the checkpoint with 2 clips x 3 crops and saves the logits,
and `--mode=infer` predicts the whole folder with those 2x3 views.
"""

import csv
import importlib.util
import json
import os
import re

import numpy as np
import pytest

from tests import video_fixtures
from tests.tiny import run_python, write_folder_config

CLASSES = ("ApplyLipstick", "Biking", "Diving", "Drumming", "Fencing", "Surfing")
BAD = "Surfing/v_Surfing_g03_c01.avi"  # A test video of the split, overwritten with junk.
MULTI_VIEW = ["--config.dataset.num_test_clips=2", "--config.dataset.num_test_crops=3"]


def _main(cfg, work, *args, check=True):
  return run_python(["-m", "vivit_knn.main", f"--config={cfg}", f"--workdir={work}", *args],
                    check=check)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(layout, config file, workdir, train stdout, eval stdout, infer stdout)."""
  tmp = tmp_path_factory.mktemp("evalout")
  layout = video_fixtures.write_ucf101(str(tmp / "ucf"), classes=CLASSES, train_per_class=2,
                                       test_per_class=1, num_frames=12)
  with open(os.path.join(layout.root, BAD), "wb") as f:
    f.write(b"not a video" * 300)
  cfg = tmp / "ucf_tiny.py"
  write_folder_config(cfg, layout.root, {
      "train.num_train_steps": 3, "train.global_batch_size": 4, "optimizer.warmup_steps": 0,
      "eval.global_batch_size": 4})
  work = tmp / "run"
  train = _main(cfg, work).stdout
  evaluated = _main(cfg, work, "--mode=eval", "--config.eval.save_logits=True",
                    *MULTI_VIEW).stdout
  inferred = _main(cfg, work, "--mode=infer", f"--video={layout.root}", *MULTI_VIEW).stdout
  return layout, cfg, work, train, evaluated, inferred


def _results(work, suffix):
  return json.loads((work / "eval" / f"results_{suffix}.json").read_text())


def test_two_view_settings_leave_two_distinct_reports(run):
  _, _, work, train, evaluated, _ = run
  single, multi = _results(work, "step_3_1x1"), _results(work, "step_3_2x3")
  assert single["views"] == {"clips": 1, "crops": 1}
  assert multi["views"] == {"clips": 2, "crops": 3}
  for result in (single, multi):
    assert result["step"] == 3
    assert result["videos"] == {"listed": 6, "evaluated": 5, "skipped": 1}
    assert result["num_examples"] == 5
  # Different views give different scores, so neither file is a copy of the other.
  assert single["loss"] != multi["loss"]
  for kind in ("per_class", "skipped"):
    assert (work / "eval" / f"{kind}_step_3_1x1.txt").is_file()
    assert (work / "eval" / f"{kind}_step_3_2x3.txt").is_file()
  assert (work / "eval" / "confusion_matrix_step_3_2x3.png").is_file()
  assert not (work / "eval" / "logits_step_3_1x1.npz").exists()  # save_logits is opt-in
  skipped = (work / "eval" / "skipped_step_3_2x3.txt").read_text()
  assert os.path.basename(BAD) in skipped
  for out, suffix in ((train, "1x1"), (evaluated, "2x3")):
    match = re.search(r"evaluated (\d+) of (\d+) listed test videos \((\d+) skipped, see (\S+)\)",
                      out)
    assert match, out
    assert match.groups()[:3] == ("5", "6", "1")
    assert match.group(4).endswith(f"skipped_step_3_{suffix}.txt")


def _load_config(path):
  spec = importlib.util.spec_from_file_location("ucf_tiny", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_multi_view_eval_logits_are_the_mean_of_single_view_logits(run):
  import jax

  from vivit_knn.data.registry import load_video_views
  from vivit_knn.models.registry import build_model
  from vivit_knn.train.run_info import restore_params

  layout, cfg_path, work, _, _, _ = run
  saved = np.load(work / "eval" / "logits_step_3_2x3.npz")
  assert saved["logits"].shape == (5, len(CLASSES))
  videos = [os.path.relpath(str(v), layout.root) for v in saved["videos"]]
  assert sorted(videos) == sorted(v for v in layout.test if v != BAD)
  np.testing.assert_array_equal(saved["labels"],
                                [CLASSES.index(v.split("/")[0]) for v in videos])
  config = _load_config(cfg_path)
  config.dataset.num_test_clips, config.dataset.num_test_crops = 2, 3
  params, step = restore_params(str(work))
  assert step == 3
  model = build_model(config.model, len(CLASSES))
  apply = jax.jit(lambda x: model.apply({"params": params}, x, train=False)[0])
  for video, logits in zip(videos, saved["logits"]):
    views = load_video_views(os.path.join(layout.root, video), config.dataset)
    assert views.shape[0] == 6
    per_view = np.stack([np.asarray(apply(views[v:v + 1]))[0] for v in range(6)])
    np.testing.assert_allclose(logits, per_view.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_infer_probabilities_are_the_softmax_of_the_eval_logits(run):
  layout, _, work, _, _, inferred = run
  saved = np.load(work / "eval" / "logits_step_3_2x3.npz")
  csv_path = work / "predictions" / f"{os.path.basename(layout.root)}_step_3.csv"
  assert f"predictions: {csv_path}" in inferred
  assert re.search(r"predicted 17 of 18 videos .*1 unreadable", inferred), inferred
  with open(csv_path) as f:
    rows = {row["file"]: row for row in csv.DictReader(f)}
  assert BAD not in rows and len(rows) == 17
  for video, logits in zip(saved["videos"], saved["logits"]):
    z = logits.astype(np.float64) - logits.max()
    probs = np.exp(z) / np.exp(z).sum()
    row = rows[os.path.relpath(str(video), layout.root)]
    for rank in range(1, 6):
      name, prob = row[f"top{rank}_class"], float(row[f"top{rank}_prob"])
      np.testing.assert_allclose(prob, probs[CLASSES.index(name)], rtol=1e-4, atol=1e-6)
    assert row["top1_class"] == CLASSES[int(np.argmax(logits))]


_MEMORY_PROBE = """
import time
import numpy as np
from vivit_knn.train import metrics

def peak_kb():
  for line in open('/proc/self/status'):
    if line.startswith('VmHWM'):
      return int(line.split()[1])

C, B, N = {classes}, 32, {batches}
rng = np.random.default_rng(0)
batches = [(rng.normal(size=(B, C)).astype(np.float32), rng.integers(0, C, B)) for _ in range(3)]
before = peak_kb()
acc = metrics.EvalAccumulator(C)
start = time.perf_counter()
for i in range(N):
  logits, labels = batches[i % 3]
  acc.update(logits, labels, np.ones(B))
per_batch = (time.perf_counter() - start) / N
res = acc.result()
assert res['num_examples'] == B * N and res['confusion_matrix'] is None
print(C, (peak_kb() - before) / 1024, per_batch)
"""


def test_eval_accumulation_at_30000_classes_stays_small():
  out = run_python(_MEMORY_PROBE.format(classes=30000, batches=20)).stdout.split()
  assert int(out[0]) == 30000
  # A dense int64 [C, C] matrix alone would be 7.2 GB.
  assert float(out[1]) < 300, f"peak memory grew by {out[1]} MB"


def test_sparse_confusion_matches_a_dense_reference():
  from vivit_knn.train import metrics

  rng = np.random.default_rng(3)
  c = 7
  acc = metrics.EvalAccumulator(c, dense_confusion=False)
  dense = np.zeros((c, c), np.int64)
  for _ in range(4):
    logits, labels = rng.normal(size=(9, c)), rng.integers(0, c, 9)
    mask = rng.integers(0, 2, 9)
    acc.update(logits, labels, mask)
    for row, y, m in zip(logits, labels, mask):
      dense[y, int(np.argmax(row))] += int(m)
  res = acc.result()
  assert res["confusion_matrix"] is None
  true, pred, count = res["confusion_pairs"]
  rebuilt = np.zeros((c, c), np.int64)
  rebuilt[true, pred] = count
  np.testing.assert_array_equal(rebuilt, dense)
  np.testing.assert_array_equal(res["support"], dense.sum(axis=1))
  np.testing.assert_array_equal(res["correct"], np.diag(dense))
  np.testing.assert_array_equal(acc.dense_confusion_matrix(), dense)


def test_many_classes_skip_the_picture_and_say_so(tmp_path, capsys):
  import jax
  import tensorflow as tf

  from tests.tiny import load_config
  from vivit_knn.data import convert, registry, tfrecord
  from vivit_knn.train import evaluation
  from vivit_knn.train.experiment import build_experiment

  num_classes = evaluation.PNG_MAX_CLASSES + 1
  frames = [convert.encode_jpeg(f) for f in video_fixtures.synthetic_frames(6, 32, 40, 0)]
  for split, labels in (("train", [0, 1]), ("test", [5, num_classes - 1])):
    with tf.io.TFRecordWriter(str(tmp_path / f"{split}.tfrecord")) as writer:
      for label in labels:
        writer.write(tfrecord.make_sequence_example(frames, label))
  (tmp_path / "classes.txt").write_text("".join(f"c{i}\n" for i in range(num_classes)))
  config = load_config("synthetic_tiny")
  config.dataset = registry.DATASET_DEFAULTS["tfrecord"]()
  config.dataset.update(dict(data_dir=str(tmp_path), num_frames=4, image_size=24))
  config.train.global_batch_size = config.eval.global_batch_size = 2
  exp = build_experiment(config, training=False)
  result = evaluation.run_eval(exp, exp.init_params(jax.random.key(0)))
  assert result["confusion_matrix"] is None and result["support"].shape == (num_classes,)
  assert result["videos"] == {"listed": 2, "evaluated": 2, "skipped": 0}
  paths = evaluation.write_eval_report(exp, result, str(tmp_path / "work"), 7)
  assert "confusion_matrix" not in paths
  assert "PNG skipped" in capsys.readouterr().out
  summary = json.loads(open(paths["results"]).read())
  assert summary["confusion_matrix_png"].startswith("skipped")
  assert os.path.basename(paths["results"]) == "results_step_7_1x1.json"
  assert not list((tmp_path / "work" / "eval").glob("*.png"))
  table = open(paths["per_class"]).read().splitlines()
  assert len(table) == num_classes + 5  # Header, rule, one row per class, rule, two totals.
  assert table[-1].endswith("over 2 classes")  # Only classes 5 and 1000 have examples.
  printed = evaluation.format_result(result, exp.dataset.info.class_names).splitlines()
  assert len(printed) < 10 and "per-class accuracy of 1001 classes" in printed[-1], printed


def test_generated_clips_are_all_listed_and_readable():
  from vivit_knn.data import registry

  cfg = registry.DATASET_DEFAULTS["synthetic"]()
  cfg.num_train, cfg.num_eval = 12, 5
  ds = registry.build_dataset(cfg)
  assert ds.split_counts("eval") == {"listed": 5, "readable": 5, "skipped": 0}
  assert ds.split_counts("train")["listed"] == 12
  assert ds.skipped_sources("eval") == []
  with pytest.raises(ValueError, match="split"):
    ds.split_counts("validation")


def test_two_head_eval_reports_verb_noun_and_action_accuracy(tmp_path):
  work = tmp_path / "run"
  out = _main("configs/synthetic_cast.py", work, "--config.train.num_train_steps=2",
              "--config.train.global_batch_size=8", "--config.eval.global_batch_size=16",
              "--config.dataset.num_eval=48", "--config.optimizer.warmup_steps=0",
              "--config.dataset.num_classes=4", "--config.model.cast.num_verbs=2",
              "--config.model.cast.num_nouns=2").stdout
  summary = _results(work, "step_2_1x1")
  keys = ("top1", "verb_top1", "noun_top1", "action_top1")
  top1, verb, noun, action = (summary[k] for k in keys)
  assert summary["num_examples"] == 48
  assert action == top1 and action <= min(verb, noun)
  # Whole examples out of 48, for each factor and for both.
  for value in (verb, noun, action):
    assert 0 <= value <= 1 and (value * 48) == pytest.approx(round(value * 48))
  line = next(s for s in out.splitlines() if s.startswith("eval: "))
  printed = dict(re.findall(r"(\w+)=([0-9.]+)", line))
  for key, value in zip(keys, (top1, verb, noun, action)):
    assert float(printed[key]) == pytest.approx(value, abs=1e-4)
  from tests.events import read_scalars
  scalars = read_scalars(str(work / "train"))
  for key, value in zip(keys, (top1, verb, noun, action)):
    assert scalars[f"eval/{key}"] == [(2, pytest.approx(value, abs=1e-6))]
