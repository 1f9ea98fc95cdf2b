"""Corrupt, truncated and empty videos are skipped, counted and never fatal."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests import video_fixtures
from vivit_knn.data import convert, registry, tfrecord, video_io

SMALL = dict(num_frames=4, frame_stride=2, image_size=32, min_resize=40)


def config(name, **fields):
  cfg = registry.DATASET_DEFAULTS[name]()
  cfg.update(SMALL)
  cfg.update(fields)
  return cfg


def corrupt_video(path):
  with open(path, "wb") as f:
    f.write(np.random.default_rng(0).bytes(4000))


def truncated_video(path):
  video_fixtures.write_video(path, video_fixtures.synthetic_frames(90, 48, 64, 0))
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:int(0.7 * len(data))])


def empty_video(path):
  video_fixtures.write_video(path, np.zeros((0, 48, 64, 3), np.uint8))


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
  """UCF101 layout whose train list has a corrupt and an empty video and
  whose test list has a truncated one; plus its conversion."""
  base = tmp_path_factory.mktemp("damaged")
  layout = video_fixtures.write_ucf101(str(base / "UCF101"), train_per_class=2,
                                test_per_class=1)
  bad = {"ApplyLipstick/v_ApplyLipstick_g01_c01.avi": corrupt_video,
         "Biking/v_Biking_g02_c01.avi": empty_video,
         "Diving/v_Diving_g03_c01.avi": truncated_video}
  for rel, make in bad.items():
    make(os.path.join(layout.root, rel))
  meta = convert.convert("ucf101", layout.root, str(base / "records"),
                         num_shards=2, num_workers=1, progress=False)
  return layout, str(base / "records"), meta


def test_damaged_files_fail_to_decode_for_the_right_reason(damaged):
  layout, _, _ = damaged
  for rel, reason in (("ApplyLipstick/v_ApplyLipstick_g01_c01.avi",
                       "corrupt"),
                      ("Biking/v_Biking_g02_c01.avi", "zero_frames"),
                      ("Diving/v_Diving_g03_c01.avi", "truncated")):
    with pytest.raises(video_io.skips.BadVideoError) as info:
      video_io.read_video(os.path.join(layout.root, rel))
    assert info.value.reason == reason


def test_converter_skips_counts_and_reports(damaged):
  _, _, meta = damaged
  train, test = meta["splits"]["train"], meta["splits"]["test"]
  assert train["num_examples"] == 4 and test["num_examples"] == 2
  assert {r: len(v) for r, v in train["skipped"].items()} == {
      "corrupt": 1, "zero_frames": 1}
  assert {r: len(v) for r, v in test["skipped"].items()} == {"truncated": 1}
  report = convert.summary(meta)
  assert "v_Diving_g03_c01.avi" in report and "skipped 2" in report


def test_folder_source_skips_and_counts_exactly_once(damaged):
  layout, _, _ = damaged
  ds = registry.build_dataset(config("ucf101", format="folder",
                                     data_dir=layout.root))
  assert ds.skipped_examples() == {}
  assert ds.split_counts("eval") == {"listed": 3, "readable": None,
                                     "skipped": 0}
  for _ in range(2):  # The second pass must not count again.
    batches = list(ds.eval_batches(2))
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(mask, [1, 1, 0, 0])  # Diving is bad.
    np.testing.assert_array_equal(index, [0, 1, -1, -1])
    assert not np.any(batches[1]["inputs"])
  assert ds.skipped_examples() == {"truncated": 1}
  assert ds.split_counts("eval") == {"listed": 3, "readable": 2,
                                     "skipped": 1}
  assert [os.path.basename(s.split(":")[0]) for s in
          ds.skipped_sources("eval")] == ["v_Diving_g03_c01.avi"]
  # Two epochs of training: every batch full, bad videos replaced.
  stream = ds.train_batches(3, seed=0)
  labels = np.concatenate([next(stream)["label"] for _ in range(4)])
  assert labels.shape == (12,) and set(labels) <= {0, 1, 2}
  assert ds.skipped_examples() == {"corrupt": 1, "truncated": 1,
                                   "zero_frames": 1}
  assert ds.split_counts("train") == {"listed": 6, "readable": 4,
                                      "skipped": 2}
  with pytest.raises(ValueError, match="split"):
    ds.split_counts("test")


def _write_records(path, serialized):
  with tf.io.TFRecordWriter(path) as writer:
    for record in serialized:
      writer.write(record)


def test_tfrecord_source_skips_bad_records_and_a_truncated_shard(tmp_path):
  good_frames = [convert.encode_jpeg(f) for f in
                 video_fixtures.synthetic_frames(6, 32, 48, 1)]
  good = tfrecord.make_sequence_example(good_frames, 1)
  eval_records = [
      good,
      tfrecord.make_sequence_example([b"\xff\xd8 not a jpeg"] * 6, 0),
      tfrecord.make_sequence_example([], 0),
      tfrecord.make_sequence_example(good_frames, 7),  # Only 2 classes.
      b"\x0a\xff\xff not a proto",
      good,
  ]
  _write_records(str(tmp_path / "test.tfrecord"), eval_records)
  train_path = str(tmp_path / "train.tfrecord")
  _write_records(train_path, [good] * 4)
  with open(train_path, "rb") as f:
    data = f.read()
  with open(train_path, "wb") as f:
    f.write(data[:-100])  # The last record is cut short.
  (tmp_path / "classes.txt").write_text("a\nb\n")
  ds = registry.build_dataset(config("tfrecord", data_dir=str(tmp_path)))
  assert ds.info.num_train_examples == 3
  assert ds.skipped_examples() == {"truncated": 1}
  batches = list(ds.eval_batches(4))
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1, 0, 0, 0, 0, 1, 0, 0])
  assert ds.skipped_examples() == {"bad_jpeg": 1, "bad_label": 1,
                                   "corrupt": 1, "truncated": 1,
                                   "zero_frames": 1}
  # The cut train shard counts as one listed, skipped record.
  assert ds.split_counts("eval") == {"listed": 6, "readable": 2,
                                     "skipped": 4}
  assert ds.split_counts("train")["listed"] == 4
  assert ds.split_counts("train")["skipped"] == 1
  assert next(ds.train_batches(3))["inputs"].shape == (3, 4, 32, 32, 3)


def test_inference_names_the_bad_file(damaged, tmp_path):
  layout, _, _ = damaged
  cfg = config("ucf101", format="folder", data_dir=layout.root)
  for rel in ("ApplyLipstick/v_ApplyLipstick_g01_c01.avi",
              "Biking/v_Biking_g02_c01.avi", "Diving/v_Diving_g03_c01.avi"):
    path = os.path.join(layout.root, rel)
    with pytest.raises(ValueError, match=os.path.basename(rel)):
      registry.load_video_views(path, cfg)
  with pytest.raises(FileNotFoundError, match="absent.avi"):
    registry.load_video_views(str(tmp_path / "absent.avi"), cfg)
  # A synthetic-task config takes one centre clip at its own clip size.
  synthetic = registry.DATASET_DEFAULTS["synthetic"]()
  views = registry.load_video_views(os.path.join(layout.root, layout.test[0]),
                                    synthetic)
  size = synthetic.image_size
  assert views.shape == (1, synthetic.num_frames, size, size, 3)
  assert views.min() >= -1.0 and views.max() <= 1.0 and views.std() > 0


def test_listed_but_missing_videos_are_counted(damaged, tmp_path):
  layout, _, _ = damaged
  lists = tmp_path / "lists"
  lists.mkdir()
  for name in os.listdir(layout.splits_dir):
    text = open(os.path.join(layout.splits_dir, name)).read()
    if name == "trainlist01.txt":
      text += "Biking/v_Biking_g09_c01.avi 2\n"
    (lists / name).write_text(text)
  ds = registry.build_dataset(config("ucf101", format="folder",
                                     data_dir=layout.root,
                                     splits_dir=str(lists)))
  assert ds.info.num_train_examples == 6
  assert ds.skipped_examples() == {"missing": 1}
  assert ds.split_counts("train") == {"listed": 7, "readable": None,
                                      "skipped": 1}
  assert ds.split_counts("eval")["skipped"] == 0
