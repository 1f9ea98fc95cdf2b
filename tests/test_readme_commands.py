"""Every runnable README command of the synthetic configs runs as written.

Commands are taken from the README's `bash` blocks and indented blocks, continuation lines
joined. A command is runnable when it names a `configs/synthetic_*` config (or a workdir
trained with one) and has no `<placeholder>`. Paths are moved into a temporary folder: the
main job's `runs/synthetic_dk` is the session's trained run (its command is checked to be the
README's), `my_clip.mp4` a video written here, any other `runs/` and `exports/` folder fresh.
"""

import os
import re
import shlex
import shutil

import numpy as np
import pytest

from tests import trained_synthetic
from tests.tiny import ROOT, run_python
from tests.trained_synthetic import trained_dk  # noqa: F401  (session fixture)
from tests.video_fixtures import write_video


def _readme_commands():
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
  blocks += [m.group(0) for m in re.finditer(r"(?:^    .*\n)+", text, re.M)]
  commands = []
  for block in blocks:
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
      line = line.split("  #")[0].strip()
      if "-m vivit_knn" in line and "<" not in line and "..." not in line:
        commands.append(line.split("&& ")[-1])
  return commands


COMMANDS = list({c.split(" -m ", 1)[1]: c for c in _readme_commands()}.values())
MAIN_JOB = next(c for c in COMMANDS if c.endswith(
    f"vivit_knn.main --config={trained_synthetic.CONFIG} --workdir=runs/synthetic_dk"))
RUNNABLE = [c for c in COMMANDS if c != MAIN_JOB and (
    "configs/synthetic_" in c or "--workdir=runs/synthetic_dk" in c)]


def _groups():
  """Commands on the trained main job one by one; those sharing another workdir in order."""
  groups = {}
  for command in RUNNABLE:
    workdir = re.search(r"--workdir=(\S+)", command).group(1)
    key = command if workdir == "runs/synthetic_dk" else workdir
    groups.setdefault(key, []).append(command)
  return list(groups.values())


def test_the_readme_has_the_commands_this_test_runs():
  assert len(RUNNABLE) >= 8, RUNNABLE
  # The session's trained run is the README's main job, run as written.
  assert MAIN_JOB.split()[1:] == ["-m", "vivit_knn.main", f"--config={trained_synthetic.CONFIG}",
                                  "--workdir=runs/synthetic_dk"]


@pytest.fixture(scope="module")
def place(tmp_path_factory, trained_dk):  # noqa: F811
  """A temporary folder with the README's paths: the trained main job and a clip."""
  root = tmp_path_factory.mktemp("readme")
  shutil.copytree(trained_dk, root / "runs" / "synthetic_dk")
  rng = np.random.default_rng(0)
  write_video(str(root / "my_clip.mp4"), rng.integers(0, 255, (16, 48, 64, 3), np.uint8))
  return root


def _moved(command, root):
  args = shlex.split(command)
  assert args[0] in ("python", ".venv/bin/python"), command
  out = []
  for arg in args[1:]:
    for path in ("runs/", "exports/", "my_clip.mp4"):
      arg = arg.replace("=" + path, f"={root}/{path}")
    out.append(arg)
  return out


@pytest.mark.parametrize("commands", _groups(), ids=lambda group: group[0].split(" -m ")[1][:60])
def test_readme_commands_run_as_written(place, commands):
  for command in commands:
    proc = run_python(_moved(command, place), check=False, timeout=900)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
