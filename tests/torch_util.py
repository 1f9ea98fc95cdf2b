"""PyTorch for tests that write real state dicts (kept out of requirements.txt on purpose).

The library itself never needs torch except to read `.pt`/`.pth` files; tests that
write such files call `require_torch()`, which installs the pinned CPU build into
the running interpreter when it is missing (a fresh CI venv), or skips the test
when that is impossible (no network, no local wheel).
"""

import importlib
import subprocess
import sys

import pytest

from vivit_knn.weights.state_dict import TORCH_REQUIREMENT  # the one pin, also in error messages

__all__ = ["TORCH_REQUIREMENT", "require_torch"]


def require_torch():
  """Returns the `torch` module, pip-installing `TORCH_REQUIREMENT` first if needed.

  Skips the calling test if torch can be neither imported nor installed.
  """
  try:
    return importlib.import_module("torch")
  except ImportError:
    pass
  proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", TORCH_REQUIREMENT],
                        capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    pytest.skip(f"{TORCH_REQUIREMENT} is not installed and could not be installed:\n"
                f"{proc.stderr[-2000:]}")
  importlib.invalidate_caches()
  return importlib.import_module("torch")
