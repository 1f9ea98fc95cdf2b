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
from vivit_knn.train.summary import ProgressBar

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
  lines = re.findall(r"^synthetic_tiny: step (\d+)/4 \((\d+)%\)(.*)$", text, re.MULTILINE)
  # One line per tenth of the run: every step of a 4-step run, the last one complete.
  assert [int(step) for step, _, _ in lines] == [1, 2, 3, 4], text
  assert [int(percent) for _, percent, _ in lines] == [25, 50, 75, 100]
  last = lines[-1][2]
  assert re.search(r"loss=[\d.]+", last) and re.search(r" [\d.e+-]+ s/step", last), last
  seconds = float(re.search(r" ([\d.e+-]+) s/step", last).group(1))
  clips = float(re.search(r" ([\d.e+-]+) clips/s", last).group(1))
  assert clips == pytest.approx(BATCH / seconds, rel=0.01)


def test_main_job_writes_step_time_and_clips_per_second(main_run):
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


def _bar(stream, **kwargs):
  return ProgressBar(10, desc="job", file=stream, clips_per_step=4, log_every_s=1e9, **kwargs)


def test_progress_bar_times_only_synchronised_steps():
  """Unsynchronised updates (dispatch returned at once) are not measurements."""
  bar = _bar(io.StringIO())
  bar.update(1)  # the compiled first step starts the measurement
  start = time.perf_counter()
  for _ in range(4):
    bar.update(1, synced=False)  # returns at once, the work is queued
  assert bar.rates() == {}
  time.sleep(0.2)  # the queued work finishes while the loop waits for results
  bar.update(1, synced=True)
  expected = (time.perf_counter() - start) / 5
  assert bar.rates()["step_time_s"] == pytest.approx(expected, rel=0.1)
  assert bar.rates()["step_time_s"] >= 0.2 / 5


def test_progress_bar_rates_and_plain_lines():
  stream = io.StringIO()  # not a terminal
  bar = _bar(stream)
  assert bar.rates() == {}  # plain lines, not a live bar: checked below
  bar.update(1, loss=2.5)  # the first step (compilation) is never timed
  assert bar.rates() == {}
  stamps = [time.perf_counter()]
  for _ in range(9):
    time.sleep(0.02)
    bar.update(1, loss=1.25)
    stamps.append(time.perf_counter())
  bar.close()
  rates = bar.rates()
  expected = (stamps[-1] - stamps[0]) / 9  # mean over the window, first step excluded
  assert rates["step_time_s"] == pytest.approx(expected, rel=0.1)
  assert rates["clips_per_s"] == pytest.approx(4 / rates["step_time_s"])
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert [line.split()[2] for line in lines] == [f"{n}/10" for n in range(1, 11)]
  assert re.fullmatch(r"job: step 1/10 \(10%\) loss=2\.5 [\d.e-]+ s/step \(the first, with "
                      r"compilation\)", lines[0]), lines[0]
  assert re.fullmatch(r"job: step 10/10 \(100%\) loss=1\.25 [\d.]+ s/step [\d.]+ clips/s",
                      lines[-1])


def test_progress_bar_is_a_live_bar_only_on_a_terminal():
  stream = io.StringIO()
  bar = _bar(stream, interactive=True)
  for _ in range(3):
    bar.update(1, loss=1.0)
  bar.close()
  assert "\r" in stream.getvalue() and "clips/s" in stream.getvalue()
  quiet = io.StringIO()
  bar = _bar(quiet, enabled=False)
  bar.update(1)
  bar.update(1)
  bar.close()
  assert quiet.getvalue() == "" and "step_time_s" in bar.rates()
