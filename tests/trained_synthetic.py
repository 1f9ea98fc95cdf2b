"""The README's main job (`configs/synthetic_dk.py`), trained once per test session.

test_explain.py and test_knn_sweep.py both read this run; a module-level cache
makes the session fixture train it once even though both modules import it.
"""

import json
import os

import pytest

from tests.tiny import run_python

CONFIG = "configs/synthetic_dk.py"
_CACHE = {}


@pytest.fixture(scope="session")
def trained_dk(tmp_path_factory):
  """The workdir of a finished `python -m vivit_knn.main --config=configs/synthetic_dk.py` run."""
  if "workdir" not in _CACHE:
    workdir = str(tmp_path_factory.mktemp("synthetic_dk") / "run")
    run_python(["-m", "vivit_knn.main", f"--config={CONFIG}", f"--workdir={workdir}"])
    _CACHE["workdir"] = workdir
  return _CACHE["workdir"]


def eval_top1(workdir):
  """Top-1 of the training run's final evaluation, from its results JSON."""
  eval_dir = os.path.join(workdir, "eval")
  results = sorted(f for f in os.listdir(eval_dir) if f.startswith("results_step_"))
  with open(os.path.join(eval_dir, results[-1])) as f:
    return json.load(f)["top1"]
