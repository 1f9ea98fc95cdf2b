"""Nothing lost: the CLIs delete only what they wrote, and bad input is one line with status 2.

Every case runs the command as a user would, in a subprocess.
"""

import hashlib
import json
import os

import numpy as np
import pytest

from tests import video_fixtures
from tests.test_weights import assert_same_tree, pre_linen_names, random_image_tree
from tests.tiny import run_python
from vivit_knn.data import convert as data_convert
from vivit_knn.weights.convert import foreign_file
from vivit_knn.weights.load import load_orbax
from vivit_knn.weights.tree import flatten


def _cli(module, *args):
  return run_python(["-m", module, *args], check=False, timeout=300)


def _one_error_line(proc):
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  return lines[0]


def _hashes(path):
  """`{relative path: sha256}` of every file under `path` (or of `path` itself)."""
  if os.path.isfile(path):
    with open(path, "rb") as f:
      return {".": hashlib.sha256(f.read()).hexdigest()}
  out = {}
  for folder, _, files in os.walk(path):
    for name in files:
      full = os.path.join(folder, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _write_vit_npz(path, seed):
  tree = random_image_tree(seed=seed)
  np.savez(path, **pre_linen_names(flatten(tree)))
  return tree


def test_weights_overwrite_replaces_only_its_own_output(tmp_path):
  first, second = str(tmp_path / "first.npz"), str(tmp_path / "second.npz")
  tree1, tree2 = _write_vit_npz(first, 0), _write_vit_npz(second, 1)

  docs = tmp_path / "docs"
  (docs / "letters").mkdir(parents=True)
  (docs / "thesis.tex").write_text("\\chapter{One}\n")
  (docs / "letters" / "2019.txt").write_bytes(os.urandom(512))
  (docs / "_METADATA").write_text("a note that merely shares an Orbax file name")
  before = _hashes(str(docs))
  proc = _cli("vivit_knn.weights.convert", f"--from={first}", "--format=vit_npz",
              f"--to={docs}", "--overwrite")
  assert proc.returncode == 2, proc.stderr
  line = _one_error_line(proc)
  assert line.startswith(f"error: --to={docs} holds files this converter did not write (e.g. ")
  assert "refusing to replace it" in line
  assert _hashes(str(docs)) == before
  plain = tmp_path / "plain.txt"
  plain.write_text("not a checkpoint")
  assert foreign_file(str(plain)) == "plain.txt"
  assert foreign_file(str(docs)) == "thesis.tex"
  os.remove(docs / "thesis.tex")
  os.remove(docs / "letters" / "2019.txt")
  # Named like an Orbax file, but without Orbax's record of a checkpoint.
  assert foreign_file(str(docs)) == "_METADATA"

  dst = str(tmp_path / "vit.orbax")
  made = _cli("vivit_knn.weights.convert", f"--from={first}", "--format=vit_npz", f"--to={dst}")
  assert made.returncode == 0, made.stderr
  with open(os.path.join(dst, "vivit_knn_weights.json")) as f:
    marker = json.load(f)
  assert (marker["from"], marker["format"]) == (first, "vit_npz")
  assert_same_tree(load_orbax(dst), tree1)

  replaced = _cli("vivit_knn.weights.convert", f"--from={second}", "--format=vit_npz",
                  f"--to={dst}", "--overwrite")
  assert replaced.returncode == 0, replaced.stderr
  assert_same_tree(load_orbax(dst), tree2)
  # Written beside --to and swapped in: nothing else is left in the folder.
  assert sorted(os.listdir(tmp_path)) == ["docs", "first.npz", "plain.txt", "second.npz",
                                          "vit.orbax"]


def test_data_overwrite_keeps_files_it_did_not_write(tmp_path):
  layout = video_fixtures.write_ucf101(str(tmp_path / "UCF101"), train_per_class=1,
                                       test_per_class=1, num_frames=4, size=(16, 24))
  out = tmp_path / "records"

  def convert(*flags):
    return _cli("vivit_knn.data.convert", "--format=ucf101", f"--root={layout.root}",
                f"--out={out}", "--num_workers=1", *flags)

  first = convert("--short_side=16")
  assert first.returncode == 0, first.stderr
  ours = sorted(os.listdir(out))
  assert "conversion.json" in ours and "train.tfrecord-00000-of-00001" in ours
  (out / "notes.txt").write_text("results of the first run")
  (out / "backup.tfrecord-old").write_bytes(b"someone else's records")
  (out / ".shards" / "mine.txt").write_text("kept")
  kept = {name: h for name, h in _hashes(str(out)).items()
          if name in ("notes.txt", "backup.tfrecord-old", os.path.join(".shards", "mine.txt"))}
  assert len(kept) == 3

  again = convert("--short_side=8", "--overwrite")
  assert again.returncode == 0, again.stderr
  after = _hashes(str(out))
  assert {name: after.get(name) for name in kept} == kept
  with open(out / "conversion.json") as f:
    assert json.load(f)["options"]["short_side"] == 8

  # A folder whose classes.txt this converter did not write is refused, --overwrite or not.
  theirs = tmp_path / "theirs"
  theirs.mkdir()
  (theirs / "classes.txt").write_text("cat\ndog\n")
  before = _hashes(str(theirs))
  for overwrite in (False, True):
    with pytest.raises(ValueError, match=r"holds files this converter did not write \(e\.g\. "
                       r"classes\.txt\)"):
      data_convert.convert("ucf101", layout.root, str(theirs), num_workers=1, progress=False,
                           overwrite=overwrite)
  assert _hashes(str(theirs)) == before


@pytest.mark.parametrize("case", ["out_under_file", "num_classes", "none_config", "stray"])
def test_bad_input_is_one_line_with_status_2(tmp_path, case):
  (tmp_path / "notes.txt").write_text("a file")
  (tmp_path / "none_config.py").write_text("def get_config():\n  return None\n")
  # A config that imports nothing of the library: these errors come before any model code.
  config, workdir = str(tmp_path / "config.py"), str(tmp_path / "run")
  with open(config, "w") as f:
    f.write("import ml_collections\n\n\ndef get_config():\n"
            "  return ml_collections.ConfigDict({'dataset': {'num_classes': 5}})\n")
  args, expected = {
      "out_under_file": (
          ["vivit_knn.data.convert", "--format=folder", f"--root={tmp_path}",
           f"--out={tmp_path}/notes.txt/records"],
          f"error: --out={tmp_path}/notes.txt/records lies under {tmp_path}/notes.txt, which "
          "is a file"),
      "num_classes": (
          ["vivit_knn.tools.model_stats", f"--config={config}", "--num_classes=-3"],
          "error: --num_classes must be at least 1, got -3"),
      "none_config": (
          ["vivit_knn.main", f"--config={tmp_path}/none_config.py", f"--workdir={workdir}"],
          f"error: --config: {tmp_path}/none_config.py's get_config() returned None; it must "
          "return a ml_collections.ConfigDict"),
      "stray": (
          ["vivit_knn.main", f"--config={config}", f"--workdir={workdir}", "extra"],
          "error: unexpected argument 'extra'"),
  }[case]
  proc = _cli(*args)
  assert proc.returncode == 2, proc.stderr
  assert _one_error_line(proc).startswith(expected), proc.stderr
  assert not os.path.exists(workdir) and not os.path.exists(tmp_path / "records")
