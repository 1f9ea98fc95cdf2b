"""Logs for people: no library start-up noise, plain progress lines in log files, rates.

The main job runs once (tiny, 4 steps) with stdout/stderr piped, as in a batch job's
log. Start-up noise checked for: TensorFlow's C++ lines (`oneDNN custom operations`,
`cpu_feature_guard`, `This TensorFlow binary is optimized`), absl's C++ preamble
(`All log messages before absl::InitializeLog()`), absl/glog-prefixed Python log lines
(`I1129 02:25:03.37 ... file.py:12]`, e.g. JAX's `Unable to initialize backend` and
Orbax's checkpoint INFO lines).
"""

import io
import json
import math
import re
import time

import numpy as np
import pytest

from tests.events import read_scalars
from tests.tiny import run_python
from vivit_knn.train.summary import ProgressLog, TenthsCounter

NOISE = [
    re.compile(r"oneDNN custom operations"),
    re.compile(r"cpu_feature_guard"),
    re.compile(r"This TensorFlow binary is optimized"),
    re.compile(r"absl::InitializeLog"),
    re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\]", re.MULTILINE),
    re.compile(r"Unable to initialize backend"),
]
STEPS, BATCH = 4, 8


def noise(text):
  return [p.pattern for p in NOISE if p.search(text)]


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("logs") / "run"
  proc = run_python(["-m", "vivit_knn.main", "--config=configs/synthetic_tiny.py",
                     f"--workdir={workdir}", f"--config.train.num_train_steps={STEPS}",
                     "--config.optimizer.warmup_steps=0", "--config.train.log_every_steps=2",
                     "--config.train.eval_at_end=False",
                     f"--config.train.global_batch_size={BATCH}"], timeout=600)
  return proc, workdir


def test_main_job_log_has_no_startup_noise_and_plain_progress_lines(main_run):
  proc, _ = main_run
  text = proc.stdout + proc.stderr
  assert "\r" not in text
  assert noise(text) == [], text[:2000]
  lines = re.findall(r"^synthetic_tiny: step (\d+)/4 \((\d+)%\)(.*)$", proc.stderr, re.MULTILINE)
  # The first step (compilation), then one line per log step (every 2 steps).
  assert [int(step) for step, _, _ in lines] == [1, 2, 4], text
  assert [int(percent) for _, percent, _ in lines] == [25, 50, 100]
  assert re.fullmatch(r" [\d.e+-]+ s/step \(the first, with compilation\)", lines[0][2])
  last = lines[-1][2]
  assert re.search(r"loss=[\d.]+", last) and re.search(r" [\d.e+-]+ s/step", last), last
  seconds = float(re.search(r" ([\d.e+-]+) s/step", last).group(1))
  clips = float(re.search(r" ([\d.e+-]+) clips/s", last).group(1))
  assert clips == pytest.approx(BATCH / seconds, rel=0.01)
  end = re.findall(r"^synthetic_tiny: trained (\d+) steps in ([\d.]+) s \(compile ([\d.]+) s\), "
                   r"([\d.]+) clips/s$", proc.stdout, re.MULTILINE)
  assert len(end) == 1 and end[0][0] == "4", proc.stdout
  total, compile_s, clips = map(float, end[0][1:])
  assert 0 < compile_s <= total and clips > 0


def test_main_job_writes_step_time_clips_per_second_and_clus_progress(main_run):
  _, workdir = main_run
  scalars = read_scalars(workdir / "train")
  assert "train/step_time_s" in scalars and "train/clips_per_s" in scalars, sorted(scalars)
  for (step_a, seconds), (step_b, clips) in zip(scalars["train/step_time_s"],
                                                scalars["train/clips_per_s"]):
    assert step_a == step_b and 0 < seconds < 60 and math.isfinite(clips)
    assert clips == pytest.approx(BATCH / seconds, rel=1e-4)
  # clu's ReportProgress, at the log steps.
  assert [step for step, _ in scalars["steps_per_sec"]] == [2, 4]
  assert all(rate > 0 for _, rate in scalars["steps_per_sec"])


def test_event_files_hold_the_logged_and_evaluated_values(main_run):
  """clu's event files, read back with TensorBoard's reader: what the console and JSON say."""
  proc, workdir = main_run
  loss = read_scalars(workdir / "train")["train/loss"]
  assert [step for step, _ in loss] == [2, 4]
  printed = re.findall(r"^synthetic_tiny: step 4/4 .* loss=([\d.]+)", proc.stderr, re.MULTILINE)
  assert float(printed[-1]) == pytest.approx(loss[-1][1], rel=1e-3)
  run_python(["-m", "vivit_knn.main", "--config=configs/synthetic_tiny.py",
              f"--workdir={workdir}", "--mode=eval"], timeout=600)
  results = json.loads((workdir / "eval" / "results_step_4_1x1.json").read_text())
  evaluated = read_scalars(workdir / "eval")
  for key in ("top1", "top5", "loss"):
    assert evaluated[f"eval/{key}"] == [(4, pytest.approx(results[key], abs=1e-6))], key


def test_startup_lines_are_hidden_unless_verbose():
  # The same import with and without quiet_startup: the patterns do match real noise.
  code = ("import sys; from vivit_knn import cli; "
          "cli.quiet_startup(sys.argv[1:]); import tensorflow")
  quiet = run_python(["-c", code], timeout=120, env_extra={"TF_CPP_MIN_LOG_LEVEL": ""})
  loud = run_python(["-c", code, "--verbose"], timeout=120, env_extra={"TF_CPP_MIN_LOG_LEVEL": ""})
  assert noise(quiet.stdout + quiet.stderr) == []
  assert "oneDNN custom operations" in loud.stderr or "cpu_feature_guard" in loud.stderr, (
      loud.stderr)


def test_weight_converter_hides_orbax_info_lines(tmp_path):
  from vivit_knn.weights.tree import flatten
  from tests.test_weights import pre_linen_names, random_image_tree

  src = str(tmp_path / "vit.npz")
  np.savez(src, **pre_linen_names(flatten(random_image_tree())))
  args = ["-m", "vivit_knn.weights.convert", f"--from={src}", "--format=vit_npz"]
  quiet = run_python(args + [f"--to={tmp_path / 'a'}"], timeout=120)
  assert noise(quiet.stdout + quiet.stderr) == [], quiet.stderr
  assert quiet.stderr == "" and quiet.stdout.startswith(f"wrote {tmp_path / 'a'}: ")
  loud = run_python(args + [f"--to={tmp_path / 'b'}", "--verbose"], timeout=120)
  assert "orbax" in loud.stderr.lower() and noise(loud.stderr), loud.stderr[:2000]


def test_progress_lines_show_only_numbers_measured_since_the_previous_line():
  stream = io.StringIO()
  log = ProgressLog(10, 0, "job", clips_per_step=4, file=stream)
  log.first()
  time.sleep(0.05)
  first = log.line(5, {"loss": 2.5, "top1": 0.25})
  stamp = time.perf_counter()
  time.sleep(0.2)
  second = log.line(10, {"loss": 1.25})
  elapsed = time.perf_counter() - stamp
  lines = stream.getvalue().splitlines()
  assert [line.split()[2] for line in lines] == ["1/10", "5/10", "10/10"]
  # The second window's rate is its own (0.2 s over 5 steps), not a mean with the first's.
  assert second["step_time_s"] == pytest.approx(elapsed / 5, rel=0.2)
  assert second["step_time_s"] > first["step_time_s"]
  assert second["clips_per_s"] == pytest.approx(4 / second["step_time_s"])
  assert re.fullmatch(r"job: step 5/10 \(50%\) loss=2\.5 top1=0\.25 [\d.e-]+ s/step "
                      r"[\d.e+]+ clips/s eta 0:00:\d\d", lines[1]), lines[1]
  assert re.fullmatch(r"job: step 10/10 \(100%\) loss=1\.25 [\d.e-]+ s/step [\d.e+]+ clips/s",
                      lines[2]), lines[2]
  # A log step right after the first step has no steps to time: no rate is made up.
  again = io.StringIO()
  log = ProgressLog(10, 3, "job", clips_per_step=4, file=again)
  log.first()
  assert log.line(4, {"loss": 1.0}) == {}
  assert again.getvalue().splitlines()[-1] == "job: step 4/10 (40%) loss=1"


def test_a_periodic_eval_is_left_out_of_the_step_time_and_the_final_rate(capsys):
  log = ProgressLog(10, 0, "job", clips_per_step=4, file=io.StringIO())
  log.first()
  time.sleep(0.05)
  log.line(5, {})
  with log.evaluating(5):
    time.sleep(0.5)
  stamp = time.perf_counter()
  time.sleep(0.05)
  rates = log.line(10, {})
  assert rates["step_time_s"] == pytest.approx((time.perf_counter() - stamp) / 5, rel=0.3)
  assert rates["step_time_s"] < 0.5 / 5
  log.end(10)
  total, evals, clips = map(float, re.fullmatch(
      r"job: trained 10 steps in ([\d.]+) s \(compile [\d.]+ s, periodic evals ([\d.]+) s\), "
      r"([\d.]+) clips/s\n", capsys.readouterr().out).groups())
  assert evals >= 0.5 and total >= 0.6
  # 9 timed steps in about 0.1 s of training: counting the eval's 0.5 s would give 36 / 0.6.
  assert clips > 2 * 4 * 9 / total


def test_processes_other_than_the_first_print_nothing():
  quiet = io.StringIO()
  log = ProgressLog(4, 0, "job", clips_per_step=4, enabled=False, file=quiet)
  log.first()
  assert "step_time_s" in log.line(2, {"loss": 1.0})
  counter = TenthsCounter(10, "eval", "videos", enabled=False, file=quiet)
  counter.add(10)
  assert quiet.getvalue() == ""


def test_counter_prints_at_each_tenth_reached():
  stream = io.StringIO()
  counter = TenthsCounter(20, "evaluating", "test videos", file=stream)
  for n in (1, 1, 3, 15):
    counter.add(n)
  assert stream.getvalue().splitlines() == [
      "evaluating: 2/20 test videos", "evaluating: 5/20 test videos",
      "evaluating: 20/20 test videos"]


WARNING_SCRIPT = """
import warnings
from absl import logging
from vivit_knn import cli

def main(argv):
  logging.warning("checkpoint step 4 is old:\\nsecond line of a library's report")
  warnings.warn("a library option is deprecated", UserWarning)
  return 0

cli.run(main)
"""


def test_library_warnings_are_one_plain_line_each():
  proc = run_python(["-c", WARNING_SCRIPT])
  lines = proc.stderr.splitlines()
  assert lines[0] == "warning: checkpoint step 4 is old:", proc.stderr
  assert re.fullmatch(r"warning: .*:\d+: UserWarning: a library option is deprecated", lines[1])
  assert len(lines) == 2 and noise(proc.stderr) == []
  loud = run_python(["-c", WARNING_SCRIPT, "--verbose"])
  assert "second line of a library's report" in loud.stderr  # --verbose keeps the raw form
