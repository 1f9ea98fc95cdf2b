"""TSN-style segment sampling (``dataset.frame_sampling='segments'``).

Expected frame indices are written out by hand. The end-to-end checks read real
video folders and TFRecords whose frames are flat grey at a level that encodes the
frame's index, so the frames a clip holds can be read back from its pixels.
"""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tests import video_fixtures
from tests.tiny import load_config
from vivit_knn.data import processors, registry, tfrecord
from vivit_knn.data.options import ProcessSpec, processing_fields

CLASSES = ("ApplyLipstick", "Biking")
TRAIN_FRAMES = 20
# Eval video lengths, one video per class, in test-list order.
EVAL_FRAMES = (20, 22)
SIZE = (32, 48)


def spec(**overrides):
  cfg = ml_collections.ConfigDict(processing_fields())
  cfg.update(overrides)
  return ProcessSpec.from_config(cfg)


def segments(**overrides):
  return spec(frame_sampling="segments", frame_stride=1, **overrides)


# Frame indices.


def test_test_clips_take_segment_middles_then_shifted_offsets():
  # n=20, T=4: segments of tick=5 frames.
  s = segments(num_frames=4)
  assert processors.view_indices(s, 20).tolist() == [2, 7, 12, 17]
  s2 = segments(num_frames=4, num_test_clips=2)
  # Clip 0: middles (offset 2.5); clip 1: starts (offset (0.5 + 1/2) % 1 = 0).
  assert processors.view_indices(s2, 20).tolist() == [2, 7, 12, 17, 0, 5, 10, 15]
  s3 = segments(num_frames=4, num_test_clips=3)
  # Offsets 2.5, 5 * (5/6) = 4.17 and 5 * (1/6) = 0.83.
  assert processors.view_indices(s3, 20).tolist() == [2, 7, 12, 17, 4, 9, 14, 19,
                                                      0, 5, 10, 15]
  # n=22: tick=5.5; middles at 2.75, 8.25, 13.75, 19.25; starts at 0, 5.5, 11, 16.5.
  assert processors.view_indices(s2, 22).tolist() == [2, 8, 13, 19, 0, 5, 11, 16]


def test_test_clips_of_a_video_shorter_than_the_clip_repeat_frames():
  # n=3, T=4: tick=0.75; middles at 0.375, 1.125, 1.875, 2.625.
  assert processors.view_indices(segments(num_frames=4), 3).tolist() == [0, 1, 1, 2]
  assert processors.view_indices(segments(num_frames=4, num_test_clips=2), 3).tolist() == [
      0, 1, 1, 2, 0, 0, 1, 2]
  assert processors.view_indices(segments(num_frames=4), 1).tolist() == [0, 0, 0, 0]


def test_train_clip_takes_one_frame_from_each_segment():
  s = segments(num_frames=4)
  seen = [set() for _ in range(4)]
  for seed in range(200):
    idx = processors.clip_indices(s, 22, np.random.default_rng(seed))
    assert idx.shape == (4,) and idx.dtype == np.int64
    # avg = 22 // 4 = 5: segment x is frames [5x, 5x + 5); 20 and 21 are never drawn.
    for x, i in enumerate(idx.tolist()):
      assert 5 * x <= i < 5 * x + 5
      seen[x].add(i - 5 * x)
  assert all(offsets == {0, 1, 2, 3, 4} for offsets in seen)  # Each offset is drawn.


def test_train_offsets_follow_the_generator():
  s = segments(num_frames=4)
  draw = lambda seed: processors.clip_indices(s, 20, np.random.default_rng(seed)).tolist()
  assert draw(3) == draw(3)
  assert len({tuple(draw(seed)) for seed in range(10)}) > 1


def test_train_clip_of_a_video_shorter_than_the_clip_is_deterministic():
  s = segments(num_frames=4)
  for seed in range(5):
    # floor(x * 3 / 4) for x = 0..3.
    assert processors.clip_indices(s, 3, np.random.default_rng(seed)).tolist() == [0, 0, 1, 2]
  assert processors.clip_indices(segments(num_frames=5), 2,
                                 np.random.default_rng(0)).tolist() == [0, 0, 0, 1, 1]


def test_strided_sampling_stays_the_default():
  s = spec(num_frames=4, frame_stride=2)
  assert s.frame_sampling == "strided"
  # span 7, last start 20 - 7 = 13, one centred clip starts at 6.
  assert processors.view_indices(s, 20).tolist() == [6, 8, 10, 12]
  idx = processors.clip_indices(s, 20, np.random.default_rng(0))
  assert np.all(np.diff(idx) == 2)


# Config checks.


def test_unknown_frame_sampling_is_refused():
  with pytest.raises(ValueError, match="dataset.frame_sampling"):
    spec(frame_sampling="uniform")


@pytest.mark.parametrize("stride", [2, 4])
def test_segments_refuse_a_frame_stride(stride):
  with pytest.raises(ValueError) as err:
    spec(frame_sampling="segments", frame_stride=stride)
  message = str(err.value)
  assert f"dataset.frame_stride={stride}" in message
  assert "dataset.frame_sampling='segments'" in message
  cfg = registry.DATASET_DEFAULTS["tfrecord"]()
  cfg.update(frame_sampling="segments", frame_stride=stride)
  with pytest.raises(ValueError, match="dataset.frame_stride"):
    registry.build_dataset(cfg)


@pytest.mark.parametrize("name,frames", [("ssv2_cast", 16), ("ssv2_tsd_fpld", 8)])
def test_ssv2_configs_sample_segments(name, frames):
  config = load_config(name)
  s = ProcessSpec.from_config(config.dataset)
  assert (s.frame_sampling, s.frame_stride, s.num_frames) == ("segments", 1, frames)


# End to end: real files.


def level(t):
  """Grey level of frame ``t``: 8 levels apart, far beyond codec and JPEG error."""
  return 8 * t + 12


def index_frames(num_frames):
  frames = np.empty((num_frames,) + SIZE + (3,), np.uint8)
  for t in range(num_frames):
    frames[t] = level(t)
  return frames


def frame_numbers(pixels):
  """Frame index of each frame in ``[..., T, H, W, 3]`` pixels: ``[..., T]``."""
  mean = np.asarray(pixels, np.float64).mean(axis=(-3, -2, -1))
  return np.round((mean - 12) / 8).astype(int)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """A UCF101-layout folder and the same videos as DMVR TFRecords."""
  base = tmp_path_factory.mktemp("segments")
  root = base / "UCF101"
  lists = root / "ucfTrainTestlist"
  lists.mkdir(parents=True)
  records = base / "records"
  records.mkdir()
  train, test = [], []
  with tf.io.TFRecordWriter(str(records / "train.tfrecord")) as train_w, \
       tf.io.TFRecordWriter(str(records / "test.tfrecord")) as test_w:
    for label, name in enumerate(CLASSES):
      (root / name).mkdir()
      lengths = [TRAIN_FRAMES, TRAIN_FRAMES, EVAL_FRAMES[label]]
      for g, n in enumerate(lengths, start=1):
        rel = f"{name}/v_{name}_g{g:02d}_c01.mp4"
        frames = index_frames(n)
        video_fixtures.write_video(str(root / rel), frames)
        jpegs = [tf.io.encode_jpeg(f, quality=95).numpy() for f in frames]
        record = tfrecord.make_sequence_example(jpegs, label, name, rel)
        if g < 3:
          train.append(f"{rel} {label + 1}\n")
          train_w.write(record)
        else:
          test.append(f"{rel}\n")
          test_w.write(record)
  (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(CLASSES)))
  (lists / "trainlist01.txt").write_text("".join(train))
  (lists / "testlist01.txt").write_text("".join(test))
  return str(root), str(records)


SEGMENTS = dict(num_frames=4, frame_stride=1, frame_sampling="segments", image_size=32,
                min_resize=32, scale_jitter=(1.0, 1.0), random_flip=False)


def build(videos, source, **fields):
  root, records = videos
  if source == "folder":
    cfg = registry.DATASET_DEFAULTS["ucf101"]()
    cfg.update(format="folder", data_dir=root)
  else:
    cfg = registry.DATASET_DEFAULTS["tfrecord"]()
    cfg.update(data_dir=records, train_pattern="train.tfrecord",
               eval_pattern="test.tfrecord", num_classes=len(CLASSES))
  cfg.update(SEGMENTS)
  cfg.update(fields)
  return registry.build_dataset(cfg)


def to_pixels(x):
  return (np.asarray(x) + 1.0) * 127.5


@pytest.mark.parametrize("source", ["folder", "tfrecord"])
def test_eval_batches_hold_segment_middles_then_starts(videos, source):
  ds = build(videos, source, num_test_clips=2)
  batch = next(ds.eval_batches(2))
  assert batch["inputs"].shape == (2, 2, 4, 32, 32, 3)  # [videos, views, T, H, W, 3]
  np.testing.assert_array_equal(batch["label"], [0, 1])
  got = frame_numbers(to_pixels(batch["inputs"]))
  # 20 frames: tick 5; 22 frames: tick 5.5 (middles 2.75 + 5.5 x, starts 5.5 x).
  np.testing.assert_array_equal(got, [[[2, 7, 12, 17], [0, 5, 10, 15]],
                                      [[2, 8, 13, 19], [0, 5, 11, 16]]])


@pytest.mark.parametrize("source", ["folder", "tfrecord"])
def test_train_batches_take_one_frame_per_segment(videos, source):
  ds = build(videos, source)
  got = []
  for _, batch in zip(range(3), ds.train_batches(4, seed=1)):
    assert batch["inputs"].shape == (4, 4, 32, 32, 3)
    got.append(frame_numbers(to_pixels(batch["inputs"])))
  got = np.concatenate(got)  # [12 clips, T]: every train video has 20 frames.
  starts = 5 * np.arange(4)
  assert np.all((got >= starts) & (got < starts + 5)), got
  assert len({tuple(row) for row in got.tolist()}) > 1  # Random offsets, not fixed ones.


def test_strided_sampling_of_the_same_files_is_unchanged(videos):
  ds = build(videos, "folder", frame_sampling="strided", frame_stride=2)
  batch = next(ds.eval_batches(2))
  # span 7; 20 frames: centred start (20 - 7) // 2 = 6; 22 frames: start 7.
  np.testing.assert_array_equal(frame_numbers(to_pixels(batch["inputs"])),
                                [[6, 8, 10, 12], [7, 9, 11, 13]])


def test_single_video_views_use_segments(videos):
  root, _ = videos
  cfg = registry.DATASET_DEFAULTS["ucf101"]()
  cfg.update(SEGMENTS)
  cfg.update(num_test_clips=2)
  views = registry.load_video_views(
      os.path.join(root, CLASSES[1], f"v_{CLASSES[1]}_g03_c01.mp4"), cfg)
  assert views.shape == (2, 4, 32, 32, 3)
  np.testing.assert_array_equal(frame_numbers(to_pixels(views)),
                                [[2, 8, 13, 19], [0, 5, 11, 16]])
