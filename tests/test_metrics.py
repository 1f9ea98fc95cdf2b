"""Tests for vivit_knn.train.metrics and vivit_knn.train.summary."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.events import read_scalars, read_text
from vivit_knn.train import metrics, summary


def _np_topk(logits, labels, k):
  k = min(k, logits.shape[1])
  top = np.argsort(-logits, axis=1)[:, :k]
  return (top == labels[:, None]).any(axis=1).astype(np.float32)


@pytest.mark.parametrize("k", [1, 3, 5, 50])
def test_topk_correct_matches_numpy(k):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(32, 10)).astype(np.float32)
  labels = rng.integers(0, 10, size=32)
  fn = jax.jit(metrics.topk_correct, static_argnums=2)
  got = np.asarray(fn(jnp.asarray(logits), jnp.asarray(labels), k))
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, _np_topk(logits, labels, k))


def test_topk_correct_hand_case():
  logits = jnp.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5]])
  labels = jnp.array([1, 2, 0])
  np.testing.assert_array_equal(np.asarray(metrics.topk_correct(logits, labels, 1)), [1, 0, 0])
  np.testing.assert_array_equal(np.asarray(metrics.topk_correct(logits, labels, 2)), [1, 1, 0])


def test_confusion_matrix_and_per_class_accuracy():
  labels = [0, 0, 1, 1, 1, 2, 0]
  preds = [0, 1, 1, 1, 0, 2, 2]
  weights = [1, 1, 1, 1, 1, 1, 0]  # last row is padding
  acc = metrics.EvalAccumulator(4)
  acc.update(np.eye(4)[preds], labels, weights)
  res = acc.result()
  cm = res["confusion_matrix"]
  assert cm.dtype == np.int64
  expected = np.array(
      [
          [1, 1, 0, 0],
          [1, 2, 0, 0],
          [0, 0, 1, 0],
          [0, 0, 0, 0],
      ]
  )
  np.testing.assert_array_equal(cm, expected)
  per_class = res["per_class_accuracy"]
  np.testing.assert_allclose(per_class[:3], [0.5, 2 / 3, 1.0])
  assert np.isnan(per_class[3])
  unweighted = metrics.EvalAccumulator(4)
  unweighted.update(np.eye(4)[preds], labels)
  cm = unweighted.result()["confusion_matrix"]
  assert cm[0, 2] == 1 and cm.sum() == 7


def test_confusion_matrix_rejects_out_of_range():
  with pytest.raises(ValueError):
    metrics.EvalAccumulator(3).update(np.eye(3)[[0, 1]], [0, 3])


def test_format_per_class_report():
  cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 1]])
  report = metrics.format_class_table(cm.sum(axis=1), np.diag(cm), ["walk", "run", "jump"])
  lines = report.splitlines()
  rows = [line.split() for line in lines[2:5]]
  assert rows[0] == ["0", "walk", "4", "0.7500"]
  assert rows[1] == ["1", "run", "0", "n/a"]
  assert rows[2] == ["2", "jump", "2", "0.5000"]
  assert "overall accuracy: 0.6667 over 6 examples" in report


def _png_size(path):
  with open(path, "rb") as f:
    data = f.read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  width = int.from_bytes(data[16:20], "big")
  height = int.from_bytes(data[20:24], "big")
  return width, height


@pytest.mark.parametrize("num_classes", [4, 60])
def test_save_confusion_matrix_png(tmp_path, num_classes):
  rng = np.random.default_rng(num_classes)
  cm = rng.integers(0, 5, size=(num_classes, num_classes))
  cm[1] = 0  # a class without examples must not break normalisation
  names = [f"class_{i}" for i in range(num_classes)]
  path = tmp_path / "nested" / "dir" / "cm.png"
  out = metrics.save_confusion_matrix_png(cm, names, path, title="val")
  assert out == str(path)
  assert os.path.getsize(path) > 0
  width, height = _png_size(path)
  assert width > 0 and height > 0
  from PIL import Image

  with Image.open(path) as img:
    assert img.size == (width, height)
    assert img.format == "PNG"
    pixels = np.asarray(img.convert("L"))
  assert pixels.std() > 0  # something was drawn


def _np_ce(logits, labels):
  shifted = logits - logits.max(1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
  return -logp[np.arange(len(labels)), labels]


def _np_confusion(preds, labels, num_classes):
  """Rows: true class, columns: predicted class."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, preds), 1)
  return cm


def test_eval_accumulator_matches_concatenation_and_ignores_mask():
  rng = np.random.default_rng(5)
  c = 8
  l1, l2 = rng.normal(size=(6, c)), rng.normal(size=(5, c))
  y1, y2 = rng.integers(0, c, 6), rng.integers(0, c, 5)
  m1 = np.array([1, 1, 0, 1, 1, 1])
  m2 = np.array([1, 0, 1, 1, 0])
  # Garbage in masked rows must not matter.
  l1[2] = 1e3
  y2[1] = c - 1

  acc = metrics.EvalAccumulator(c)
  acc.update(l1.astype(np.float32), y1, m1)
  acc.update(jnp.asarray(l2, jnp.float32), jnp.asarray(y2), jnp.asarray(m2))
  res = acc.result()

  keep1, keep2 = m1 == 1, m2 == 1
  logits = np.concatenate([l1[keep1], l2[keep2]]).astype(np.float32).astype(np.float64)
  labels = np.concatenate([y1[keep1], y2[keep2]])
  assert res["num_examples"] == 8
  np.testing.assert_allclose(res["top1"], _np_topk(logits, labels, 1).mean(), rtol=1e-9)
  np.testing.assert_allclose(res["top5"], _np_topk(logits, labels, 5).mean(), rtol=1e-9)
  np.testing.assert_allclose(res["loss"], _np_ce(logits, labels).mean(), rtol=1e-6)
  cm = _np_confusion(logits.argmax(1), labels, c)
  np.testing.assert_array_equal(res["confusion_matrix"], cm)
  with np.errstate(invalid="ignore"):
    per_class = np.diag(cm) / cm.sum(axis=1)  # NaN for a class with no example
  np.testing.assert_array_equal(np.isnan(res["per_class_accuracy"]), np.isnan(per_class))
  np.testing.assert_allclose(np.nan_to_num(res["per_class_accuracy"], nan=-1),
                             np.nan_to_num(per_class, nan=-1))

  single = metrics.EvalAccumulator(c)
  single.update(logits, labels)
  for key in ("top1", "top5", "loss"):
    np.testing.assert_allclose(res[key], single.result()[key], rtol=1e-9)


def test_eval_accumulator_empty_is_nan():
  res = metrics.EvalAccumulator(3).result()
  assert res["num_examples"] == 0
  assert np.isnan(res["top1"]) and np.isnan(res["loss"])


def test_writer_roundtrip(tmp_path):
  logdir = tmp_path / "logs"
  writer = summary.open_writer(logdir)
  writer.write_scalars(1, {"train/loss": 2.5, "train/lr": np.float32(0.1)})
  writer.write_scalars(7, {"train/loss": jnp.float32(1.25)})
  writer.write_texts(7, {"report": "hello table"})
  writer.close()
  scalars = read_scalars(logdir)
  assert set(scalars) == {"train/loss", "train/lr"}
  assert [s for s, _ in scalars["train/loss"]] == [1, 7]
  np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [2.5, 1.25], rtol=1e-6)
  assert scalars["train/lr"][0][0] == 1
  np.testing.assert_allclose(scalars["train/lr"][0][1], 0.1, rtol=1e-6)
  assert read_text(logdir) == {"report": [(7, "hello table")]}


def test_disabled_writer_creates_no_files(tmp_path):
  logdir = tmp_path / "off"
  writer = summary.open_writer(logdir, enabled=False)
  writer.write_scalars(1, {"a": 1.0})
  writer.write_texts(1, {"t": "x"})
  writer.flush()
  writer.close()
  assert not logdir.exists()


def test_eval_accumulator_scores_verbs_nouns_and_actions_of_joint_logits():
  rng = np.random.default_rng(11)
  v, n, views = 5, 7, 3
  acc = metrics.EvalAccumulator(v * n, factors=(v, n))
  verb_hits, noun_hits, both, count = 0, 0, 0, 0
  for b in (16, 9):
    # Each view has its own verb and noun log-probabilities; the model's joint logits
    # are their sums, averaged over views.
    verb_logp = rng.normal(size=(b, views, v)) * 2
    noun_logp = rng.normal(size=(b, views, n)) * 2
    verb_logp -= np.log(np.exp(verb_logp).sum(-1, keepdims=True))
    noun_logp -= np.log(np.exp(noun_logp).sum(-1, keepdims=True))
    joint = (verb_logp[:, :, :, None] + noun_logp[:, :, None, :]).reshape(b, views, v * n)
    # Labels whose verb or noun is often the predicted one, so every rate is informative.
    pred_verb = verb_logp.mean(1).argmax(-1)
    pred_noun = noun_logp.mean(1).argmax(-1)
    verb = np.where(rng.random(b) < 0.6, pred_verb, rng.integers(0, v, b))
    noun = np.where(rng.random(b) < 0.5, pred_noun, rng.integers(0, n, b))
    labels = verb * n + noun
    mask = np.ones(b)
    mask[0] = 0
    keep = mask == 1
    acc.update(joint.mean(1).astype(np.float32), labels, mask)
    verb_hits += int((pred_verb == verb)[keep].sum())
    noun_hits += int((pred_noun == noun)[keep].sum())
    both += int(((pred_verb == verb) & (pred_noun == noun))[keep].sum())
    count += int(keep.sum())
  res = acc.result()
  assert res["num_examples"] == count == 23
  assert res["verb_top1"] == pytest.approx(verb_hits / count)
  assert res["noun_top1"] == pytest.approx(noun_hits / count)
  assert res["action_top1"] == pytest.approx(both / count)
  assert res["action_top1"] == res["top1"]
  assert 0 < res["action_top1"] < min(res["verb_top1"], res["noun_top1"]) < 1


def test_eval_accumulator_without_factors_has_no_verb_noun_metrics():
  res = metrics.EvalAccumulator(6).result()
  assert not {"verb_top1", "noun_top1", "action_top1"} & set(res)
  with pytest.raises(ValueError, match="factors"):
    metrics.EvalAccumulator(6, factors=(2, 4))
