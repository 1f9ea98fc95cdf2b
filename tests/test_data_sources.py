"""Real sources on real files: UCF101/HMDB51 folders, the converter, TFRecords."""

import itertools
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests import video_fixtures
from tests.tiny import run_python
from vivit_knn.data import (convert, records, registry, splits, tfrecord,
                            video_io)

SMALL = dict(num_frames=4, frame_stride=2, image_size=32, min_resize=40)


def config(name, **fields):
  cfg = registry.DATASET_DEFAULTS[name]()
  cfg.update(SMALL)
  cfg.update(fields)
  return cfg


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
  """A UCF101 folder (3 classes, 9 train / 6 test) and its TFRecords."""
  base = tmp_path_factory.mktemp("ucf")
  layout = video_fixtures.write_ucf101(str(base / "UCF101"))
  meta = convert.convert("ucf101", layout.root, str(base / "records"),
                         num_shards=2, num_workers=1, progress=False)
  return layout, str(base / "records"), meta


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory):
  """An HMDB51 folder (3 classes, 9 train / 6 test / 3 unused) + TFRecords."""
  base = tmp_path_factory.mktemp("hmdb")
  layout = video_fixtures.write_hmdb51(str(base / "HMDB51"))
  convert.convert("hmdb51", layout.root, str(base / "records"),
                  num_shards=3, num_workers=1, progress=False)
  return layout, str(base / "records")


def eval_pass(dataset, batch_size=4):
  """All eval batches concatenated, padding removed."""
  batches = list(dataset.eval_batches(batch_size))
  out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  keep = out["mask"] > 0
  return {k: v[keep] for k, v in out.items()}


def test_converter_writes_shards_with_metadata_and_offsets(ucf):
  layout, out, meta = ucf
  assert meta["splits"]["train"]["num_examples"] == 9
  assert meta["splits"]["test"]["num_examples"] == 6
  assert tfrecord.read_class_names(os.path.join(out, "classes.txt")) == list(
      layout.class_names)
  for shard in meta["splits"]["train"]["shards"]:
    offsets, _, problem = records.scan_offsets(os.path.join(out,
                                                            shard["file"]))
    assert offsets == shard["offsets"] and not problem
  index = records.RecordIndex(records.expand_files(
      os.path.join(out, "test.tfrecord@2")))
  seen = []
  for i in range(len(index)):
    frames, label = tfrecord.parse_sequence_example(index.read(i), "test")
    example = tf.train.SequenceExample.FromString(index.read(i))
    name = example.context.feature[tfrecord.FILENAME_KEY].bytes_list.value[0]
    video = video_io.read_video(os.path.join(layout.root, name.decode()))
    assert len(frames) == len(video)  # Every frame is stored.
    assert layout.class_names[label] == name.decode().split("/")[0]
    seen.append(name.decode())
  assert seen == layout.test  # Test order is the split list's order.


@pytest.mark.parametrize("fmt", ["folder", "tfrecord"])
def test_ucf101_sizes_shapes_and_labels(ucf, fmt):
  layout, out, _ = ucf
  ds = registry.build_dataset(config(
      "ucf101", format=fmt, data_dir=layout.root if fmt == "folder" else out))
  info = ds.info
  assert (info.num_train_examples, info.num_eval_examples) == (9, 6)
  assert info.class_names == layout.class_names
  assert info.input_shape == (4, 32, 32, 3)
  batch = next(ds.train_batches(6))
  assert batch["inputs"].shape == (6, 4, 32, 32, 3)
  assert batch["inputs"].dtype == np.float32 and batch["label"].dtype == np.int32
  assert -1.0 <= batch["inputs"].min() and batch["inputs"].max() <= 1.0
  ev = eval_pass(ds)
  np.testing.assert_array_equal(ev["index"], np.arange(6))
  expected = [layout.class_names.index(p.split("/")[0]) for p in layout.test]
  np.testing.assert_array_equal(ev["label"], expected)
  # The class colour survives decoding: the label is readable from pixels.
  colour = ev["inputs"][:, :, :, :, :].mean(axis=(1, 2, 3))
  np.testing.assert_array_equal(colour.argmax(-1), expected)
  assert ds.skipped_examples() == {}


@pytest.mark.parametrize("fmt", ["folder", "tfrecord"])
def test_hmdb51_splits_skip_unused_videos(hmdb, fmt):
  layout, out = hmdb
  ds = registry.build_dataset(config(
      "hmdb51", format=fmt, data_dir=layout.root if fmt == "folder" else out))
  assert (ds.info.num_train_examples, ds.info.num_eval_examples) == (9, 6)
  assert ds.info.class_names == layout.class_names
  ev = eval_pass(ds, batch_size=5)
  expected = [layout.class_names.index(p.split("/")[0]) for p in layout.test]
  np.testing.assert_array_equal(ev["label"], expected)


def test_folder_and_tfrecord_sources_give_the_same_clips(ucf):
  layout, out, _ = ucf
  views = dict(num_test_clips=2, num_test_crops=3, random_flip=False)
  folder = eval_pass(registry.build_dataset(config(
      "ucf101", format="folder", data_dir=layout.root, **views)))
  tfrec = eval_pass(registry.build_dataset(config(
      "ucf101", format="tfrecord", data_dir=out, **views)))
  assert folder["inputs"].shape == (6, 6, 4, 32, 32, 3)
  np.testing.assert_array_equal(folder["label"], tfrec["label"])
  diff = np.abs(folder["inputs"] - tfrec["inputs"])
  assert diff.mean() < 0.02 and np.percentile(diff, 99) < 0.15  # JPEG q90.
  # Train clips too (same seed and position -> same frames and crop).
  a = registry.build_dataset(config("ucf101", format="folder",
                                    data_dir=layout.root))
  b = registry.build_dataset(config("ucf101", format="tfrecord",
                                    data_dir=out))
  for position in range(4):
    fa, la = a.load_train_example(position, 7, position)
    fb, lb = b.load_train_example(
        b_index_of(b, layout, a._train.paths[position]), 7, position)
    assert la == lb
    assert np.abs(fa.astype(int) - fb.astype(int)).mean() < 4.0
    # The top rows carry a per-frame ramp (7 levels per frame): same frames.
    ramp_a, ramp_b = fa[:, 0].mean(axis=(1, 2)), fb[:, 0].mean(axis=(1, 2))
    np.testing.assert_allclose(ramp_a, ramp_b, atol=3.0)


def b_index_of(dataset, layout, path):
  """Record number of the video ``path`` in a TFRecord dataset's train table."""
  rel = os.path.relpath(path, layout.root)
  table = dataset._train
  for i in range(len(table)):
    raw = table._reader.read(i)
    example = tf.train.SequenceExample.FromString(raw)
    if example.context.feature[tfrecord.FILENAME_KEY].bytes_list.value[0] == (
        rel.encode()):
      return i
  raise KeyError(rel)


def test_multiview_eval_batches_and_inference_views_agree(ucf):
  layout, _, _ = ucf
  cfg = config("ucf101", format="folder", data_dir=layout.root,
               num_test_clips=2, num_test_crops=3)
  ds = registry.build_dataset(cfg)
  batches = list(ds.eval_batches(4))
  assert [b["inputs"].shape for b in batches] == [(4, 6, 4, 32, 32, 3)] * 2
  ev = eval_pass(ds)
  for i in (0, 5):
    views = registry.load_video_views(os.path.join(layout.root,
                                                    layout.test[i]), cfg)
    assert views.shape == (6, 4, 32, 32, 3) and views.dtype == np.float32
    np.testing.assert_allclose(views, ev["inputs"][i], atol=1e-5)
  single = registry.load_video_views(
      os.path.join(layout.root, layout.test[0]),
      config("ucf101", format="folder", data_dir=layout.root))
  assert single.shape == (1, 4, 32, 32, 3)


def test_train_stream_is_resumable_and_host_sliced(ucf):
  _, out, _ = ucf
  ds = registry.build_dataset(config("ucf101", data_dir=out,
                                     scale_jitter=(0.8, 1.2)))
  full = list(itertools.islice(ds.train_batches(4, seed=3), 3))
  resumed = next(ds.train_batches(4, seed=3, start_step=2))
  for key in ("inputs", "label"):
    np.testing.assert_array_equal(full[2][key], resumed[key])
  hosts = [next(ds.train_batches(4, seed=3, process_index=p,
                                 process_count=2)) for p in (0, 1)]
  np.testing.assert_array_equal(
      np.concatenate([h["inputs"] for h in hosts]), full[0]["inputs"])
  other_seed = next(ds.train_batches(4, seed=4))
  assert not np.array_equal(other_seed["inputs"], full[0]["inputs"])


def test_empty_or_missing_data_dir_says_how_to_point_at_data(tmp_path):
  for name in ("ucf101", "hmdb51"):
    with pytest.raises(ValueError, match="--config.dataset.data_dir"):
      registry.build_dataset(registry.DATASET_DEFAULTS[name]())
    with pytest.raises(FileNotFoundError, match="nowhere"):
      registry.build_dataset(config(name, data_dir=str(tmp_path / "nowhere")))


def test_raw_folder_given_as_tfrecords_suggests_format_folder(ucf):
  layout, _, _ = ucf
  with pytest.raises(FileNotFoundError, match="format=folder"):
    registry.build_dataset(config("ucf101", data_dir=layout.root))


def _copy_lists(layout, tmp_path):
  lists = tmp_path / "lists"
  shutil.copytree(layout.splits_dir, lists)
  return lists


def test_ucf101_missing_split_file_or_unknown_class_names_the_file(ucf,
                                                                   tmp_path):
  layout, _, _ = ucf
  lists = _copy_lists(layout, tmp_path)
  os.remove(lists / "testlist01.txt")
  with pytest.raises(FileNotFoundError, match="testlist01.txt"):
    registry.build_dataset(config("ucf101", format="folder",
                                  data_dir=layout.root,
                                  splits_dir=str(lists)))
  lists = _copy_lists(layout, tmp_path / "b")
  with open(lists / "trainlist01.txt", "a") as f:
    f.write("Surfing/v_Surfing_g01_c01.avi 4\n")
  with pytest.raises(ValueError, match=r"trainlist01.txt:10.*Surfing"):
    registry.build_dataset(config("ucf101", format="folder",
                                  data_dir=layout.root,
                                  splits_dir=str(lists)))


def test_hmdb51_missing_split_file_names_the_file(hmdb, tmp_path):
  layout, _ = hmdb
  lists = _copy_lists(layout, tmp_path)
  os.remove(lists / "chew_test_split1.txt")
  with pytest.raises(FileNotFoundError, match="chew_test_split1.txt"):
    registry.build_dataset(config("hmdb51", format="folder",
                                  data_dir=layout.root,
                                  splits_dir=str(lists)))
  with pytest.raises(FileNotFoundError, match="test_split2"):
    registry.build_dataset(config("hmdb51", format="folder", split=2,
                                  data_dir=layout.root,
                                  splits_dir=str(tmp_path / "lists")))


def test_generic_folder_conversion_is_resumable(tmp_path):
  root = tmp_path / "clips"
  for label, name in enumerate(("jump", "wave")):
    os.makedirs(root / name)
    for k in range(5):
      video_fixtures.write_video(str(root / name / f"{k}.mp4"),
                                 video_fixtures.synthetic_frames(10, 32, 32, label, k))
  out = str(tmp_path / "records")
  meta = convert.convert("folder", str(root), out, eval_fraction=0.2,
                         num_shards=2, num_workers=1, progress=False)
  assert meta["splits"]["train"]["num_examples"] == 8
  assert meta["splits"]["test"]["num_examples"] == 2
  shard = os.path.join(out, "train.tfrecord-00000-of-00002")
  other = os.path.join(out, "train.tfrecord-00001-of-00002")
  before = os.stat(other).st_mtime_ns
  os.remove(shard)
  again = convert.convert("folder", str(root), out, eval_fraction=0.2,
                          num_shards=2, num_workers=1, progress=False)
  assert os.path.exists(shard) and os.stat(other).st_mtime_ns == before
  assert again["splits"] == meta["splits"]
  ds = registry.build_dataset(config("tfrecord", data_dir=out))
  assert ds.info.class_names == ("jump", "wave")
  assert (ds.info.num_train_examples, ds.info.num_eval_examples) == (8, 2)


def test_tfrecord_sharded_spec_and_missing_pattern(ucf):
  _, out, _ = ucf
  ds = registry.build_dataset(config(
      "tfrecord", data_dir=out, train_pattern="train.tfrecord@2",
      eval_pattern="test.tfrecord@2"))
  assert ds.info.num_train_examples == 9
  with pytest.raises(FileNotFoundError, match="val.tfrecord"):
    registry.build_dataset(config("tfrecord", data_dir=out,
                                  eval_pattern="val.tfrecord*"))


def test_real_dataset_defaults_have_the_fields_configs_set():
  for name in ("ucf101", "hmdb51", "tfrecord", "tfds"):
    cfg = registry.DATASET_DEFAULTS[name]()
    assert {"num_frames", "image_size", "num_test_clips",
            "num_test_crops"} <= set(cfg.keys())


def test_convert_command_line_with_worker_processes(ucf, tmp_path):
  layout, _, _ = ucf
  proc = run_python(["-m", "vivit_knn.data.convert", "--format=ucf101",
                     f"--root={layout.root}", f"--out={tmp_path}",
                     "--num_workers=2", "--short_side=32", "--num_shards=3"],
                    timeout=300)
  assert "train: 9 videos in 3 shards; skipped 0" in proc.stdout
  assert f"--config.dataset.data_dir={tmp_path}" in proc.stdout
  index = records.RecordIndex(records.expand_files(
      str(tmp_path / "test.tfrecord@3")))
  frames, _ = tfrecord.parse_sequence_example(index.read(0), "test")
  image = tf.io.decode_jpeg(frames[0]).numpy()
  assert min(image.shape[:2]) == 32  # 48x64 frames downscaled to 32x43.
  bad = run_python(["-m", "vivit_knn.data.convert", "--format=hmdb51",
                    f"--root={layout.root}", f"--out={tmp_path / 'x'}"],
                   check=False, timeout=300)
  assert bad.returncode == 2 and "testTrainMulti_7030_splits" in bad.stderr


def test_class_folders_use_train_and_val_subfolders_when_present(tmp_path):
  for split, classes in (("train", ("a", "b")), ("val", ("a", "b", "c"))):
    for name in classes:
      os.makedirs(tmp_path / split / name)
      (tmp_path / split / name / "x.mp4").write_bytes(b"")
  (tmp_path / "train" / "a" / "notes.txt").write_text("not a video")
  lists = splits.class_folders(str(tmp_path))
  assert lists.class_names == ["a", "b", "c"]
  assert lists.train.labels == [0, 1] and lists.test.labels == [0, 1, 2]
  assert lists.test.paths[2] == str(tmp_path / "val" / "c" / "x.mp4")
