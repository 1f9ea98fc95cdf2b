"""A wheel built from the checkout works installed elsewhere, run from another folder.

The wheel is built without network access (`--no-build-isolation`: setuptools and wheel
come with the pinned requirements) from a copy of the checkout's package files, so the
build leaves nothing in the checkout, and installed with `--target` into a temporary
folder (its dependencies are the environment's).
"""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.tiny import ROOT

SCRIPTS = {
    "vivit-knn": "vivit_knn.main:run",
    "vivit-knn-convert-videos": "vivit_knn.data.convert.__main__:run",
    "vivit-knn-convert-weights": "vivit_knn.weights.convert.__main__:run",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  base = tmp_path_factory.mktemp("install")
  src, wheels, site = base / "src", base / "wheels", base / "site"
  os.makedirs(src)
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  shutil.copytree(os.path.join(ROOT, "vivit_knn"), src / "vivit_knn",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
  subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                        str(src)], check=True, capture_output=True, timeout=300)
  (wheel,) = wheels.glob("vivit_knn-*.whl")
  subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(site),
                        str(wheel)], check=True, capture_output=True, timeout=300)
  elsewhere = base / "elsewhere"
  os.makedirs(elsewhere)
  return wheel, site, elsewhere


def _run_elsewhere(args, site, cwd):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env["PYTHONPATH"] = str(site)
  return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_installed_converter_help_runs_from_another_folder(installed):
  _, site, elsewhere = installed
  proc = _run_elsewhere([sys.executable, "-m", "vivit_knn.data.convert", "--help"], site,
                        elsewhere)
  assert proc.returncode == 0, proc.stderr
  for flag in ("--format", "--root", "--out", "--short_side", "--[no]overwrite", "--[no]verbose"):
    assert flag in proc.stdout, flag
  where = _run_elsewhere([sys.executable, "-c", "import vivit_knn.data.convert.__main__ as m; "
                          "print(m.__file__)"], site, elsewhere)
  path = os.path.realpath(where.stdout.strip())
  assert path.startswith(os.path.realpath(site) + os.sep), path
  assert not path.startswith(os.path.realpath(ROOT) + os.sep)


def test_wheel_holds_every_module_and_the_console_scripts(installed):
  wheel, site, elsewhere = installed
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    entry_points = next(archive.read(n).decode() for n in names
                        if n.endswith(".dist-info/entry_points.txt"))
  modules = {os.path.relpath(os.path.join(folder, f), ROOT).replace(os.sep, "/")
             for folder, _, files in os.walk(os.path.join(ROOT, "vivit_knn"))
             for f in files if f.endswith(".py")}
  assert modules and modules <= names, sorted(modules - names)
  for script, target in SCRIPTS.items():
    assert f"{script} = {target}" in entry_points, entry_points
  command = os.path.join(site, "bin", "vivit-knn-convert-weights")
  proc = _run_elsewhere([command, "--help"], site, elsewhere)
  assert proc.returncode == 0 and "--[no]overwrite" in proc.stdout, proc.stdout + proc.stderr
  assert "--from" in proc.stdout and "--[no]verbose" in proc.stdout
