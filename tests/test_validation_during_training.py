"""Validation during training: `eval/` curves, the best checkpoint kept through rotation and
resume, `eval/best.json`, and `--config.eval.checkpoint` choosing what `--mode=eval` scores."""

import json
import re

import pytest

from tests.events import read_scalars
from tests.tiny import run_python

MAIN = ["-m", "vivit_knn.main", "--config=configs/synthetic_tiny.py"]
# The loss is the metric: a resume at a huge learning rate makes every later eval worse, so
# the best step is one that keep-1 rotation has removed from checkpoints/.
RUN = ["--config.train.eval_every_steps=2", "--config.train.best_metric=loss",
       "--config.train.keep_checkpoints=1", "--config.train.checkpoint_every_steps=2",
       "--config.train.eval_at_end=False", "--config.optimizer.warmup_steps=0"]


def _steps(folder):
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
  work = tmp_path_factory.mktemp("validated") / "run"
  first = run_python(MAIN + [f"--workdir={work}", "--config.train.num_train_steps=6"] + RUN)
  best_first = json.loads((work / "eval" / "best.json").read_text())
  resumed = run_python(MAIN + [f"--workdir={work}", "--config.train.num_train_steps=10",
                               "--config.optimizer.base_learning_rate=10"] + RUN)
  return work, first, best_first, resumed


def test_evals_during_training_write_curves_and_keep_the_best(validated):
  work, first, best_first, _ = validated
  losses = dict(read_scalars(work / "train")["eval/loss"])
  assert sorted(losses) == [2, 4, 6, 8, 10]
  early = {s: v for s, v in losses.items() if s <= 6}
  assert best_first["step"] == min(early, key=lambda s: (early[s], -s))  # ties: the newer
  assert best_first["metric"] == "loss"
  assert best_first["metrics"]["loss"] == pytest.approx(early[best_first["step"]], rel=1e-6)
  assert "best loss so far" in first.stdout
  # Each periodic eval prints its metrics on one line; its time is left out of the rates.
  printed = re.findall(r"^eval at step (\d+): top1=[\d.]+ top5=[\d.]+ loss=([\d.]+)$",
                       first.stdout, re.MULTILINE)
  assert {int(s): float(v) for s, v in printed} == pytest.approx(early, abs=1e-4)
  assert re.search(r"^synthetic_tiny: trained 6 steps in [\d.]+ s \(compile [\d.]+ s, "
                   r"periodic evals [\d.]+ s\), [\d.]+ clips/s$", first.stdout, re.MULTILINE)


def test_the_best_survives_rotation_and_resume(validated):
  work, _, best_first, resumed = validated
  losses = dict(read_scalars(work / "train")["eval/loss"])
  assert min(losses[8], losses[10]) > best_first["metrics"]["loss"]  # the resume made it worse
  best = json.loads((work / "eval" / "best.json").read_text())
  assert best == best_first
  assert _steps(work / "checkpoints") == [10]
  assert _steps(work / "checkpoints_best") == [best["step"]]
  assert "the learning-rate schedule changes with" in resumed.stdout
  assert "train.num_train_steps (6 -> 10)" in resumed.stdout


def test_eval_checkpoint_chooses_best_latest_or_a_step(validated):
  work, _, _, _ = validated
  best = json.loads((work / "eval" / "best.json").read_text())
  proc = run_python(MAIN + [f"--workdir={work}", "--mode=eval", "--config.eval.checkpoint=best"])
  assert f"checkpoint step {best['step']} (the best eval's)" in proc.stdout
  results = json.loads((work / "eval" / f"results_step_{best['step']}_1x1.json").read_text())
  assert results["loss"] == pytest.approx(best["metrics"]["loss"], abs=1e-6)
  proc = run_python(MAIN + [f"--workdir={work}", "--mode=eval", "--config.eval.checkpoint=10"])
  assert "checkpoint step 10\n" in proc.stdout


@pytest.mark.parametrize("override, field", [
    ("--config.eval.checkpoint=newest", "eval.checkpoint"),
    ("--config.train.best_metric=action_top1", "train.best_metric"),
    ("--config.train.eval_every_steps=-1", "train.eval_every_steps")])
def test_bad_validation_settings_are_one_line_errors(tmp_path, override, field):
  proc = run_python(MAIN + [f"--workdir={tmp_path / 'run'}", override], check=False)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.count("\n") == 1 and field in proc.stderr, proc.stderr


def test_best_on_a_run_that_keeps_none_is_a_one_line_error(tmp_path):
  (tmp_path / "run").mkdir()
  proc = run_python(MAIN + [f"--workdir={tmp_path / 'run'}", "--mode=eval",
                            "--config.eval.checkpoint=best"], check=False)
  assert proc.returncode == 2 and "keeps no best checkpoint" in proc.stderr, proc.stderr
  assert proc.stderr.count("\n") == 1


def test_export_takes_the_best_checkpoint(validated, tmp_path):
  work, _, _, _ = validated
  best = json.loads((work / "eval" / "best.json").read_text())
  run_python(["-m", "vivit_knn.tools.export", f"--workdir={work}", f"--out={tmp_path / 'x'}"])
  assert json.loads((tmp_path / "x" / "export.json").read_text())["step"] == best["step"]
