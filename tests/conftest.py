"""Shared test setup: repo root on sys.path and small helpers."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def pytest_xdist_auto_num_workers(config):
  """Workers for `-n auto` (set in pytest.ini): one per usable core, at most 4.

  Most tests are single-threaded dispatch of tiny models, so two cores run the
  suite in about two thirds of the serial time; past 4 workers the few
  minutes-long learning tests dominate and more processes only cost memory.
  """
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cores = os.cpu_count() or 1
  return max(1, min(cores, 4))
