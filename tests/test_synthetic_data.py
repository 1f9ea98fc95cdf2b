"""Tests for the dataset interface helpers and the synthetic motion dataset."""

import itertools

import ml_collections
import numpy as np
import pytest

from vivit_knn.data import base
from vivit_knn.data import registry
from vivit_knn.data import synthetic


def make_dataset(**overrides):
  """Synthetic dataset with the given config fields overridden."""
  config = synthetic.default_config()
  config.update(overrides)
  return synthetic.SyntheticMotionDataset(config)


def take(iterator, n):
  """First ``n`` elements of ``iterator`` as a list."""
  return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
  """Asserts two batch dicts have the same keys and identical arrays."""
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def centroids(clips):
  """Per-frame (row, col) centroid of the bright square: [n, T, 2]."""
  bright = clips.mean(axis=-1) > 0.0
  counts = bright.sum(axis=(2, 3))
  assert np.all(counts > 0), "every frame must show the square"
  grid = np.arange(clips.shape[2])
  rows = (bright.sum(axis=3) * grid).sum(axis=2) / counts
  cols = (bright.sum(axis=2) * grid).sum(axis=2) / counts
  return np.stack([rows, cols], axis=-1)


def oracle(clips, num_classes=4):
  """Reads the label from the order of the square's positions."""
  c = centroids(clips)
  t = clips.shape[1]
  if num_classes == 2:
    return (c[:, -1, 1] > c[:, 0, 1]).astype(np.int32)
  half = t // 2
  right = c[:, half - 1, 1] > c[:, 0, 1]
  down = c[:, -1, 0] > c[:, half, 0]
  return (2 * right + down).astype(np.int32)


def nearest_neighbour_accuracy(train_x, train_y, test_x, test_y):
  """Accuracy of a 1-nearest-neighbour classifier (squared L2)."""
  d = ((test_x[:, None, :] - train_x[None, :, :]) ** 2).sum(-1)
  return float(np.mean(train_y[d.argmin(axis=1)] == test_y))


@pytest.fixture(scope="module")
def small():
  """4 train steps per epoch at batch 16; 50 eval examples."""
  return make_dataset(num_train=64, num_eval=50)


@pytest.fixture(scope="module")
def default():
  """The dataset at its default config."""
  return synthetic.SyntheticMotionDataset(synthetic.default_config())


def test_info(default):
  info = default.info
  assert info.input_shape == (8, 32, 32, 3)
  assert info.num_classes == 4
  assert info.class_names == ("left_up", "left_down", "right_up",
                              "right_down")
  assert (info.num_train_examples, info.num_eval_examples) == (2048, 512)
  assert default.speed >= 2


def test_train_batch_shapes_dtypes_and_labels(small):
  batch = next(small.train_batches(16))
  assert set(batch) == {"inputs", "label"}
  assert batch["inputs"].shape == (16, 8, 32, 32, 3)
  assert batch["inputs"].dtype == np.float32
  assert batch["label"].shape == (16,)
  assert batch["label"].dtype == np.int32
  assert batch["label"].min() >= 0 and batch["label"].max() < 4
  assert batch["inputs"].min() >= -1.0 and batch["inputs"].max() <= 1.0
  assert batch["inputs"].max() == 1.0  # the square
  # Zero-centred background: darker than the midpoint.
  assert np.median(batch["inputs"]) < -0.5


def test_class_balance(default):
  labels = np.concatenate(
      [b["label"][b["mask"] > 0] for b in default.eval_batches(128)])
  counts = np.bincount(labels, minlength=4)
  assert counts.sum() == 512
  assert np.all(np.abs(counts - 128) <= 32), counts


def test_train_is_deterministic_across_instances(small):
  other = make_dataset(num_train=64, num_eval=50)
  for a, b in zip(take(small.train_batches(16, seed=3), 6),
                  take(other.train_batches(16, seed=3), 6)):
    assert_batches_equal(a, b)


def test_shuffle_seed_changes_order(small):
  a = next(small.train_batches(16, seed=0))
  b = next(small.train_batches(16, seed=1))
  assert not np.array_equal(a["inputs"], b["inputs"])


def test_epochs_are_fresh_shuffles_of_all_examples(small):
  all_clips, _ = small.generate("train", np.arange(64))
  # 64 examples / 16 = 4 steps per epoch.
  clips = np.concatenate([b["inputs"] for b in take(small.train_batches(16), 8)])
  order = [int(np.flatnonzero((all_clips == c).all(axis=(1, 2, 3, 4)))[0])
           for c in clips]
  first, second = order[:64], order[64:]
  assert sorted(first) == sorted(second) == list(range(64))
  assert first != second
  resumed = next(small.train_batches(16, start_step=4))
  np.testing.assert_array_equal(resumed["inputs"], clips[64:80])


def test_resume_equals_uninterrupted_stream(small):
  # 64 examples / 16 = 4 steps per epoch: steps 3..5 cross an epoch boundary.
  full = take(small.train_batches(16, seed=7), 6)
  resumed = take(small.train_batches(16, seed=7, start_step=3), 3)
  for a, b in zip(full[3:], resumed):
    assert_batches_equal(a, b)


def test_resume_does_not_generate_skipped_examples(small, monkeypatch):
  generated = []
  original = small.generate

  def counting_generate(split, indices):
    generated.append(len(indices))
    return original(split, indices)

  monkeypatch.setattr(small, "generate", counting_generate)
  next(small.train_batches(16, start_step=10_000))
  # Only the first batch plus a bounded prefetch window may be generated.
  assert 0 < sum(generated) <= 16 * 8


def test_host_slices_concatenate_to_global_batch(small):
  global_batches = take(small.train_batches(16, seed=2), 5)
  host_batches = [
      take(small.train_batches(16, seed=2, process_index=p, process_count=2),
           5) for p in range(2)
  ]
  for step, expected in enumerate(global_batches):
    parts = [host_batches[p][step] for p in range(2)]
    assert parts[0]["inputs"].shape[0] == 8
    for key in expected:
      np.testing.assert_array_equal(
          np.concatenate([part[key] for part in parts]), expected[key])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once(small, process_count):
  hosts = [
      list(small.eval_batches(16, process_index=p,
                              process_count=process_count))
      for p in range(process_count)
  ]
  assert all(len(h) == 4 for h in hosts)  # ceil(50 / 16)
  batches = [
      {k: np.concatenate([h[i][k] for h in hosts]) for k in hosts[0][i]}
      for i in range(4)
  ]
  for batch in batches:
    assert batch["inputs"].shape == (16, 8, 32, 32, 3)
    assert batch["mask"].dtype == np.float32
    assert batch["index"].dtype == np.int32
    assert batch["label"].dtype == np.int32
  index = np.concatenate([b["index"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(index[:50], np.arange(50))
  np.testing.assert_array_equal(index[50:], -1)
  np.testing.assert_array_equal(mask, (index >= 0).astype(np.float32))
  inputs = np.concatenate([b["inputs"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  expected_inputs, expected_labels = small.generate("eval", np.arange(50))
  np.testing.assert_array_equal(inputs[:50], expected_inputs)
  np.testing.assert_array_equal(labels[:50], expected_labels)
  assert np.all(inputs[50:] == 0.0)


def test_train_and_eval_examples_differ(small):
  train, _ = small.generate("train", np.arange(50))
  evals = np.concatenate([b["inputs"] for b in small.eval_batches(50)])
  assert not np.any((train[:, None] == evals[None]).all(axis=(2, 3, 4, 5)))


def test_config_seed_changes_content():
  a, _ = make_dataset(seed=0).generate("eval", np.arange(4))
  b, _ = make_dataset(seed=1).generate("eval", np.arange(4))
  assert not np.array_equal(a, b)


def test_square_moves_at_least_two_pixels_per_frame(default):
  clips, _ = default.generate("eval", np.arange(64))
  c = centroids(clips)
  steps = np.abs(np.diff(c, axis=1)).sum(-1)
  within_phase = np.concatenate([steps[:, :3], steps[:, 4:]], axis=1)
  np.testing.assert_allclose(within_phase, default.speed)
  assert default.speed >= 2


def test_order_oracle_is_perfect(default):
  batches = list(default.eval_batches(128))
  inputs = np.concatenate([b["inputs"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert np.mean(oracle(inputs) == labels) == 1.0


def test_reversing_time_within_phases_flips_the_label(default):
  clips, labels = default.generate("eval", np.arange(128))
  reversed_clips = np.concatenate(
      [clips[:, 3::-1], clips[:, :3:-1]], axis=1)
  # Same frames, different order, different class.
  np.testing.assert_array_equal(
      np.sort(reversed_clips.reshape(128, 8, -1), axis=1),
      np.sort(clips.reshape(128, 8, -1), axis=1))
  assert np.all(oracle(reversed_clips) == 3 - labels)


def test_frame_order_free_features_are_at_chance(default):
  train, train_y = default.generate("train", np.arange(2048))
  test, test_y = default.generate("eval", np.arange(512))

  def features(clips, ordered):
    c = centroids(clips)
    if not ordered:
      c = np.stack([fr[np.lexsort(fr.T[::-1])] for fr in c])
    return c.reshape(len(c), -1)

  ordered = nearest_neighbour_accuracy(
      features(train, True), train_y, features(test, True), test_y)
  unordered = nearest_neighbour_accuracy(
      features(train, False), train_y, features(test, False), test_y)
  assert ordered > 0.8
  assert unordered < 0.35


def test_shuffle_frames_permutes_each_clip():
  plain = make_dataset(num_train=64, num_eval=50)
  shuffled = make_dataset(num_train=64, num_eval=50, shuffle_frames=True)
  for split in ("train", "eval"):
    a, la = plain.generate(split, np.arange(32))
    b, lb = shuffled.generate(split, np.arange(32))
    np.testing.assert_array_equal(la, lb)
    moved, perms = 0, set()
    for clip_a, clip_b in zip(a, b):
      match = (clip_b[:, None] == clip_a[None]).all(axis=(2, 3, 4))
      perm = match.argmax(axis=1)
      assert match.any(axis=1).all()
      assert sorted(perm) == list(range(8))
      moved += int(np.any(perm != np.arange(8)))
      perms.add(tuple(perm))
    assert moved >= 30
    assert len(perms) >= 20  # seeded per example, not one shared order
  evals = np.concatenate([x["inputs"] for x in shuffled.eval_batches(50)])
  np.testing.assert_array_equal(evals, shuffled.generate("eval",
                                                         np.arange(50))[0])
  assert np.mean(oracle(evals) == np.arange(50) % 4) < 0.6


def test_two_class_variant():
  ds = make_dataset(num_classes=2, num_eval=64)
  assert ds.info.class_names == ("left", "right")
  clips, labels = ds.generate("eval", np.arange(64))
  assert set(labels.tolist()) == {0, 1}
  assert np.all(oracle(clips, num_classes=2) == labels)
  c = centroids(clips)
  assert np.all(c[:, :, 0] == c[:, :1, 0])  # purely horizontal motion


@pytest.mark.parametrize("overrides, field", [
    ({"num_classes": 3}, "dataset.num_classes"),
    ({"num_frames": 7}, "dataset.num_frames"),
    ({"num_frames": 2}, "dataset.num_frames"),
    ({"image_size": 10}, "dataset.image_size"),
    ({"noise": 1.5}, "dataset.noise"),
    ({"num_eval": 0}, "dataset.num_eval"),
    ({"bogus_field": 1}, "dataset.bogus_field"),
])
def test_invalid_config_names_field(overrides, field):
  config = ml_collections.ConfigDict(overrides)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    synthetic.SyntheticMotionDataset(config)


@pytest.mark.parametrize("kwargs", [
    {"global_batch_size": 0},
    {"global_batch_size": 15, "process_count": 2},
    {"global_batch_size": 128},  # more than the 64 train examples
])
def test_invalid_train_batch_size(small, kwargs):
  with pytest.raises(ValueError, match="global_batch_size"):
    small.train_batches(**kwargs)


def test_invalid_process_index(small):
  with pytest.raises(ValueError, match="process_index"):
    small.eval_batches(16, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="global_batch_size"):
    small.eval_batches(15, process_count=2)


def test_registry_builds_and_rejects_unknown_names():
  assert set(registry.DATASET_DEFAULTS) >= {"synthetic"}
  config = registry.DATASET_DEFAULTS["synthetic"]()
  config.num_eval = 8
  ds = registry.build_dataset(config)
  assert isinstance(ds, base.VideoDataset)
  assert ds.info.num_eval_examples == 8
  config.name = "synthetc"
  with pytest.raises(ValueError, match=r"dataset\.name.*synthetic"):
    registry.build_dataset(config)


def test_dataset_info_rejects_inconsistent_class_names():
  with pytest.raises(ValueError, match="class_names"):
    base.DatasetInfo(num_classes=3, class_names=("a", "b"),
                     num_train_examples=1, num_eval_examples=1,
                     input_shape=(1, 1, 1, 1))
