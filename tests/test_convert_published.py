"""Kinetics, Something-Something v2 and EPIC-KITCHENS-100, converted as published.

Each dataset is written in its published layout (`tests/published_datasets.py`: the
annotation files as released, H.264 `.mp4`/`.MP4` and VP9 `.webm` videos whose
frames encode their own index) and converted through the command line in a
subprocess. The records are read back with TensorFlow and checked against the
annotation files, parsed here with the csv/json modules.
"""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import published_datasets as published
from tests.tiny import run_python

CONVERT = ["-m", "vivit_knn.data.convert"]


def _convert(data, fmt, out, *flags, workers=1):
  return run_python(CONVERT + [f"--format={fmt}", f"--annotations={data.annotations}",
                               f"--root={data.root}", f"--out={out}", "--short_side=32",
                               f"--num_workers={workers}", *flags], check=False, timeout=600)


def _records(out, split):
  """``[(context dict, frames)]`` of a split's records, in shard order."""
  files = sorted(tf.io.gfile.glob(os.path.join(out, f"{split}.tfrecord-*")))
  found = []
  for raw in tf.data.TFRecordDataset(files):
    example = tf.train.SequenceExample.FromString(raw.numpy())
    context = {}
    for key, feature in example.context.feature.items():
      kind = feature.WhichOneof("kind")
      value = getattr(feature, kind).value[0]
      context[key] = value.decode() if isinstance(value, bytes) else int(value)
    frames = [tf.io.decode_jpeg(f.bytes_list.value[0]).numpy()
              for f in example.feature_lists.feature_list["image/encoded"].feature]
    found.append((context, frames))
  return found


def _seconds(stamp):
  hours, minutes, seconds = stamp.split(":")
  return 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def _converted(tmp_path_factory, fmt, write):
  """Writes a dataset in its published layout and converts it: ``(data, out, process)``."""
  base = tmp_path_factory.mktemp(fmt)
  data = write(str(base / "published"))
  out = str(base / "records")
  proc = _convert(data, fmt, out)
  assert proc.returncode == 0, proc.stderr
  return data, out, proc


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
  return _converted(tmp_path_factory, "kinetics", published.write_kinetics)


@pytest.fixture(scope="module")
def ek100(tmp_path_factory):
  return _converted(tmp_path_factory, "ek100", published.write_ek100)


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
  return _converted(tmp_path_factory, "ssv2", published.write_ssv2)


def test_kinetics_records_match_the_csv_files(kinetics):
  data, out, proc = kinetics
  with open(data.csv_files["train"], newline="") as f:
    train_rows = list(csv.DictReader(f))
  classes = sorted({row["label"] for row in train_rows})
  assert open(os.path.join(out, "classes.txt")).read().splitlines() == classes
  for split, csv_name in (("train", "train"), ("test", "validate")):
    with open(data.csv_files[csv_name], newline="") as f:
      rows = {published.kinetics_clip_id(r["youtube_id"], int(r["time_start"]),
                                         int(r["time_end"])): r for r in csv.DictReader(f)}
    records = _records(out, split)
    assert len(records) == len(rows) - len(data.missing[split]) > 0
    for context, frames in records:
      row = rows[context["video/filename"]]
      assert context["clip/label/index"] == classes.index(row["label"])
      assert context["clip/label/text"] == row["label"]
      assert frames
    for clip in data.missing[split]:
      assert clip in proc.stdout  # listed as skipped, never an error
  meta = json.load(open(os.path.join(out, "metadata.json")))
  assert len(meta["splits"]["train"]["skipped"]["missing"]) == len(data.missing["train"])


def test_an_untrimmed_kinetics_video_is_cut_to_its_time_range(kinetics):
  data, out, _ = kinetics
  by_name = {c["video/filename"]: frames for split in ("train", "test")
             for c, frames in _records(out, split)}
  rows = {published.kinetics_clip_id(r["youtube_id"], int(r["time_start"]),
                                     int(r["time_end"])): r
          for split in ("train", "test") for r in data.rows[split]}
  assert data.untrimmed
  for clip in data.untrimmed:
    row, frames = rows[clip], by_name[clip]
    times = [published.frame_number(f) / data.fps for f in frames]
    assert min(times) >= int(row["time_start"]) and max(times) <= int(row["time_end"])
    # Every frame of the range is kept, in order.
    assert len(times) == (int(row["time_end"]) - int(row["time_start"])) * data.fps + 1
    assert times == sorted(times)
  for clip in data.shadowed:  # the trimmed clip wins: its frames start at 0
    assert published.frame_number(by_name[clip][0]) == 0


def test_ek100_records_carry_verb_noun_and_action(ek100):
  data, out, _ = ek100
  with open(os.path.join(data.annotations, "EPIC_100_noun_classes.csv"), newline="") as f:
    num_nouns = sum(1 for _ in csv.DictReader(f))
  meta = json.load(open(os.path.join(out, "metadata.json")))
  assert len(meta["label_sets"]["noun"]) == num_nouns
  for split, name in (("train", "EPIC_100_train.csv"), ("test", "EPIC_100_validation.csv")):
    with open(os.path.join(data.annotations, name), newline="") as f:
      rows = {r["narration_id"]: r for r in csv.DictReader(f)}
    records = _records(out, split)
    assert len(records) == len(rows) - len(data.missing[split]) > 0
    for context, frames in records:
      row = rows[context["video/filename"]]
      verb, noun = int(row["verb_class"]), int(row["noun_class"])
      assert context["clip/label/verb/index"] == verb
      assert context["clip/label/noun/index"] == noun
      assert context["clip/label/index"] == verb * num_nouns + noun
      # The segment's frames come from [start, stop] of the long video.
      times = [published.frame_number(f) / data.fps for f in frames]
      start, stop = _seconds(row["start_timestamp"]), _seconds(row["stop_timestamp"])
      assert frames and start <= min(times) and max(times) <= stop
      # ...and all of them: the first and last frames of the range are kept.
      assert min(times) < start + 1.0 / data.fps and max(times) > stop - 1.0 / data.fps
      assert len(times) == round((max(times) - min(times)) * data.fps) + 1


def test_ssv2_labels_come_from_the_templates_without_brackets(ssv2):
  data, out, proc = ssv2
  with open(os.path.join(data.annotations, "labels.json")) as f:
    labels = {name: int(index) for name, index in json.load(f).items()}
  for split, name in (("train", "train.json"), ("test", "validation.json")):
    with open(os.path.join(data.annotations, name)) as f:
      entries = {e["id"]: e for e in json.load(f)}
    records = _records(out, split)
    assert len(records) == len(entries) - len(data.missing[split]) > 0
    for context, frames in records:
      template = entries[context["video/filename"]]["template"]
      assert "[" in template
      expected = labels[template.replace("[", "").replace("]", "")]
      assert context["clip/label/index"] == expected
      assert published.colour_index(frames[0]) == expected
  ids = {c["video/filename"] for split in ("train", "test") for c, _ in _records(out, split)}
  assert not ids & set(data.test_ids)  # the unlabelled test list is not converted
  assert "test.json" in proc.stdout


def test_the_same_records_at_one_and_three_workers(kinetics, tmp_path):
  data, out, _ = kinetics
  again = str(tmp_path / "three")
  proc = _convert(data, "kinetics", again, "--num_shards=2", workers=3)
  assert proc.returncode == 0, proc.stderr
  one = str(tmp_path / "one")
  assert _convert(data, "kinetics", one, "--num_shards=2").returncode == 0
  names = sorted(n for n in os.listdir(one) if ".tfrecord-" in n)
  assert len(names) == 4
  for name in names:
    with open(os.path.join(one, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
      assert a.read() == b.read(), name
  # Beam's worker logs stay off the terminal.
  assert "apache_beam" not in proc.stderr and "Worker" not in proc.stderr


def test_a_rerun_resumes_with_the_same_options_and_stops_with_others(ek100):
  data, out, _ = ek100
  shards = sorted(n for n in os.listdir(out) if ".tfrecord-" in n)
  before = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in shards}
  same = _convert(data, "ek100", out)
  assert same.returncode == 0, same.stderr
  assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in shards} == before
  assert "kept from an earlier run" in same.stderr
  other = _convert(data, "ek100", out, "--jpeg_quality=50")
  assert other.returncode == 2
  assert other.stderr.strip().splitlines() == [
      other.stderr.strip().splitlines()[0]] and "--jpeg_quality=90 (now 50)" in other.stderr


def test_flags_that_are_neither_ours_nor_beams_are_refused(ek100, tmp_path):
  data, _, _ = ek100
  proc = _convert(data, "ek100", str(tmp_path / "x"), "--num_shard=3")
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("error: unknown flag --num_shard: neither a converter flag nor "
                                 "an Apache Beam pipeline option (see --help)")
  assert not os.path.exists(tmp_path / "x")
  missing = run_python(CONVERT + ["--format=ssv2", f"--root={data.root}",
                                  f"--out={tmp_path / 'y'}"], check=False)
  assert missing.returncode == 2
  assert "--format=ssv2 needs --annotations" in missing.stderr


def test_the_records_parse_as_tensorflows_own_sequence_examples(ek100):
  """Records written without TensorFlow re-serialise byte for byte with TensorFlow's classes."""
  _, out, _ = ek100
  files = sorted(tf.io.gfile.glob(os.path.join(out, "train.tfrecord-*")))
  for raw in tf.data.TFRecordDataset(files):
    raw = raw.numpy()
    example = tf.train.SequenceExample.FromString(raw)
    assert example.SerializeToString(deterministic=True) == raw
  assert np.all([tf.io.gfile.stat(f).length > 0 for f in files])
