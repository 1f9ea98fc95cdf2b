"""Shared test setup: repo root on sys.path, xdist workers and a shared compilation cache."""

import os
import shutil
import sys
import tempfile

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


def pytest_configure(config):
  """Lets the tests' subprocesses share JAX's persistent compilation cache.

  Most tests start `python -m vivit_knn...` processes that compile the same tiny programs;
  compiling dominates their time. The cache folder is one per test session, shared by the
  pytest-xdist workers (their common `testrunuid`) and removed at the end. A size limit
  turns on the cache's file lock, so two workers never read a half-written entry. JAX is
  imported first, so the test processes themselves compile as they would without it.
  """
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return  # the caller's own cache
  import uuid  # pylint: disable=g-import-not-at-top

  import jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  run = getattr(config, "workerinput", {}).get("testrunuid") or uuid.uuid4().hex
  config.jax_cache_dir = os.path.join(tempfile.gettempdir(), f"vivit_knn_tests_jax_cache_{run}")
  os.environ.update({"JAX_COMPILATION_CACHE_DIR": config.jax_cache_dir,
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_COMPILATION_CACHE_MAX_SIZE": str(8 << 30)})


def pytest_unconfigure(config):
  """The session's compilation cache goes when the session ends (the workers end first)."""
  if hasattr(config, "jax_cache_dir") and not hasattr(config, "workerinput"):
    shutil.rmtree(config.jax_cache_dir, ignore_errors=True)
