"""TFDS video builders: mocked ucf101 (random access) and a real prepared one."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests import video_fixtures
from vivit_knn.data import registry

SMALL = dict(num_frames=4, frame_stride=2, image_size=32, min_resize=36)


def config(name, **fields):
  cfg = registry.DATASET_DEFAULTS[name]()
  cfg.update(SMALL)
  cfg.update(fields)
  return cfg


class TinyVideos(tfds.core.GeneratorBasedBuilder):
  """Two classes of small synthetic clips; prepared without downloads."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Video((None, 24, 32, 3)),
            "label": tfds.features.ClassLabel(names=["left", "right"]),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(6, 0),
            "test": self._generate_examples(4, 100)}

  def _generate_examples(self, count, offset):
    for i in range(count):
      label = i % 2
      yield offset + i, {"video": video_fixtures.synthetic_frames(
          10 + i, 24, 32, label, seed=i), "label": label}


def test_mocked_ucf101_builder_through_tfds_and_ucf101_names(tmp_path):
  # Mocked examples are 256x256 noise videos, regenerated on every read:
  # keep the reads few.
  with tfds.testing.mock_data(num_examples=3):
    ds = registry.build_dataset(config("tfds", builder="ucf101"))
    assert ds.info.num_classes == 101
    assert ds.info.class_names[0] == "ApplyEyeMakeup"
    assert (ds.info.num_train_examples, ds.info.num_eval_examples) == (3, 3)
    batch = next(ds.train_batches(2))
    assert batch["inputs"].shape == (2, 4, 32, 32, 3)
    assert np.all((batch["label"] >= 0) & (batch["label"] < 101))
    (evals,) = list(ds.eval_batches(3))
    assert evals["mask"].sum() == 3
    assert ds.skipped_examples() == {}
    named = registry.build_dataset(config("ucf101", format="tfds",
                                          data_dir=str(tmp_path), split=2))
    assert named.info.num_classes == 101 and named.info.num_eval_examples == 3


def test_prepared_tfrecord_builder_is_read_by_offset(tmp_path):
  builder = TinyVideos(data_dir=str(tmp_path))
  builder.download_and_prepare()
  cfg = config("tfds", builder="tiny_videos", data_dir=str(tmp_path),
               num_test_clips=2)
  ds = registry.build_dataset(cfg)
  assert ds.info.class_names == ("left", "right")
  assert (ds.info.num_train_examples, ds.info.num_eval_examples) == (6, 4)
  batches = list(ds.eval_batches(4))
  assert batches[0]["inputs"].shape == (4, 2, 4, 32, 32, 3)
  expected = {int(ex["label"]) for ex in tfds.as_numpy(
      builder.as_dataset(split="test"))}
  assert set(batches[0]["label"].tolist()) == expected
  # Colour encodes the class (red = left, green = right).
  colour = batches[0]["inputs"].mean(axis=(1, 2, 3, 4))
  np.testing.assert_array_equal(colour.argmax(-1), batches[0]["label"])
  sliced = registry.build_dataset(config(
      "tfds", builder="tiny_videos", data_dir=str(tmp_path),
      train_split="train[2:5]"))
  assert sliced.info.num_train_examples == 3


def test_unprepared_builder_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfds build"):
    registry.build_dataset(config("tfds", builder="tiny_videos",
                                  data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="no TFDS builder"):
    registry.build_dataset(config("hmdb51", format="tfds",
                                  data_dir=str(tmp_path)))
