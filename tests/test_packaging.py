"""pyproject.toml agrees with requirements.txt and the package, and CI lints before testing."""

import os
import re

import pytest

import vivit_knn
from tests.tiny import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

TEST_TOOLS = {"pytest", "pytest-xdist", "filelock", "ruff"}


def _project():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _requirements():
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_dependencies_are_the_pinned_runtime_requirements():
  want = [r for r in _requirements() if re.split(r"[=<>~!\[]", r)[0] not in TEST_TOOLS]
  assert _project()["project"]["dependencies"] == want


def test_the_linter_is_pinned_to_the_configured_version():
  assert "ruff==0.17.5" in _requirements()
  assert _project()["tool"]["ruff"]["indent-width"] == 2


def test_version_matches_the_package():
  assert _project()["project"]["version"] == vivit_knn.__version__


def test_ci_lints_then_runs_the_readme_test_command():
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    script = f.read()
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  commands = [line for line in script.splitlines() if line and not line.startswith(("#", "set ",
                                                                                    "cd "))]
  assert "set -euo pipefail" in script
  assert commands[-1] in readme, "the last command of .ci/run is the README's test command"
  assert commands[-1].index("ruff check") < commands[-1].index("pytest")
