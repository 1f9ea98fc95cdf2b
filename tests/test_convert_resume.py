"""The video converter resumes only a conversion made with the same options and sources.

`<out>/conversion.json` records every option and a hash of the source videos; a rerun
into the same `--out` with other options or sources stops with one line naming each
difference (both values) unless `--overwrite` is given, and half-written shards are
never kept.
"""

import json
import os
import re
import shutil

import pytest
import tensorflow as tf

from tests import video_fixtures
from tests.tiny import run_python
from vivit_knn.data import convert, records, tfrecord


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
  """A UCF101 folder of 48x64 videos (3 classes, 9 train / 6 test)."""
  return video_fixtures.write_ucf101(str(tmp_path_factory.mktemp("ucf") / "UCF101"))


def _cli(layout, out, *flags):
  return run_python(["-m", "vivit_knn.data.convert", "--format=ucf101", f"--root={layout.root}",
                     f"--out={out}", "--num_workers=1", *flags], check=False, timeout=300)


def _first_frame_shape(out, split="test"):
  files = sorted(tf.io.gfile.glob(os.path.join(out, f"{split}.tfrecord-*")))
  frames, _ = tfrecord.parse_sequence_example(records.RecordIndex(files).read(0), split)
  return tuple(tf.io.decode_jpeg(frames[0]).numpy().shape[:2])


def _shard_times(out):
  return {name: os.stat(os.path.join(out, name)).st_mtime_ns
          for name in os.listdir(out) if ".tfrecord-" in name}


def test_rerun_with_another_short_side_fails_then_overwrites(ucf, tmp_path):
  out = str(tmp_path / "records")
  first = _cli(ucf, out, "--short_side=32")
  assert first.returncode == 0, first.stderr
  assert _first_frame_shape(out) == (32, 43)  # 48x64 frames, short side 32
  # Not a terminal: plain progress lines, no carriage returns.
  assert "\r" not in first.stderr + first.stdout
  assert "converted 15/15 videos (100%)" in first.stderr
  before = _shard_times(out)

  refused = _cli(ucf, out, "--short_side=24")
  assert refused.returncode == 2
  lines = refused.stderr.strip().splitlines()
  assert len(lines) == 1, refused.stderr
  assert lines[0].startswith(f"error: --out={out} holds a conversion with other settings: ")
  assert "--short_side=32 (now 24)" in lines[0] and "--overwrite" in lines[0]
  assert "--root" not in lines[0] and "--split" not in lines[0]  # only what differs
  assert _shard_times(out) == before and _first_frame_shape(out) == (32, 43)

  replaced = _cli(ucf, out, "--short_side=24", "--overwrite")
  assert replaced.returncode == 0, replaced.stderr
  assert _first_frame_shape(out) == (24, 32) and _first_frame_shape(out, "train") == (24, 32)
  with open(os.path.join(out, "conversion.json")) as f:
    assert json.load(f)["options"]["short_side"] == 24
  with open(os.path.join(out, tfrecord.METADATA_FILE)) as f:
    assert json.load(f)["short_side"] == 24


def _convert(layout_root, out, **options):
  options = {"num_shards": 2, "num_workers": 1, "progress": False, "short_side": 32, **options}
  return convert.convert("ucf101", layout_root, out, **options)


def test_same_options_resume_and_other_sources_or_options_are_named(ucf, tmp_path):
  out = str(tmp_path / "records")
  meta = _convert(ucf.root, out)
  before = _shard_times(out)
  assert _convert(ucf.root, out)["splits"] == meta["splits"]
  assert _shard_times(out) == before  # resumed: nothing rewritten

  with pytest.raises(ValueError, match=r"--num_shards=2 \(now 3\); --jpeg_quality=90 \(now 50\)"):
    _convert(ucf.root, out, num_shards=3, jpeg_quality=50)

  copy = str(tmp_path / "copy")
  shutil.copytree(ucf.root, copy)
  root_change = re.escape(f"--root={ucf.root} (now {copy})")
  with pytest.raises(ValueError, match=root_change) as err:
    _convert(copy, out)
  assert "source videos" not in str(err.value)  # same relative paths, sizes and times

  video = os.path.join(copy, ucf.train[0])
  stat = os.stat(video)
  os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a re-encoded file
  with pytest.raises(ValueError, match=r"the source videos .*train 9->9 test 6->6"):
    _convert(copy, out)
  assert _shard_times(out) == before


def test_half_written_shards_are_rewritten_and_unrecorded_shards_refused(ucf, tmp_path):
  out = str(tmp_path / "records")
  _convert(ucf.root, out)
  names = sorted(_shard_times(out))
  contents = {}
  for name in names:
    with open(os.path.join(out, name), "rb") as f:
      contents[name] = f.read()
  # An interrupted run: one shard cut short, one whose rename never happened (stats
  # written, file absent), a temporary file left behind, and no metadata yet.
  cut, lost = names[0], names[1]
  with open(os.path.join(out, cut), "r+b") as f:
    f.truncate(len(contents[cut]) // 2)
  os.remove(os.path.join(out, lost))
  with open(os.path.join(out, ".shards", lost + ".tmp"), "wb") as f:
    f.write(b"partial")
  os.remove(os.path.join(out, tfrecord.METADATA_FILE))
  kept = {n: t for n, t in _shard_times(out).items() if n not in (cut, lost)}

  meta = _convert(ucf.root, out)
  for name in names:
    with open(os.path.join(out, name), "rb") as f:
      assert f.read() == contents[name], name
  assert {n: t for n, t in _shard_times(out).items() if n in kept} == kept
  assert (meta["splits"]["train"]["num_examples"], meta["splits"]["test"]["num_examples"]) == (
      9, 6)

  os.remove(os.path.join(out, "conversion.json"))  # as left by an older converter
  with pytest.raises(ValueError, match="holds shards but no conversion.json.*--overwrite"):
    _convert(ucf.root, out)
  _convert(ucf.root, out, overwrite=True)
  assert os.path.exists(os.path.join(out, "conversion.json"))
