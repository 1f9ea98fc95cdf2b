"""Classification metrics: top-k on device (jit-able); accumulation, tables and PNGs on the host."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# Above this many classes the per-class tick labels overlap, so they are hidden.
_MAX_TICK_LABELS = 50
_MAX_ANNOTATED = 20


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """float32 0/1 ``[B]``: whether each label is among the ``k`` highest of ``[B, C]`` logits."""
  k = min(int(k), logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  hit = jnp.any(top == jnp.asarray(labels)[..., None].astype(top.dtype), axis=-1)
  return hit.astype(jnp.float32)


def _recall(correct: np.ndarray, support: np.ndarray) -> np.ndarray:
  """``correct / support`` per class as float64; ``nan`` where a class has no examples."""
  with np.errstate(invalid="ignore", divide="ignore"):
    acc = np.asarray(correct, np.float64) / support
  return np.where(support > 0, acc, np.nan)


def _class_names(class_names: Optional[Sequence[str]], num_classes: int) -> list[str]:
  if class_names is None:
    return [str(i) for i in range(num_classes)]
  names = [str(n) for n in class_names]
  if len(names) != num_classes:
    raise ValueError(f"got {len(names)} class names for {num_classes} classes")
  return names


def save_confusion_matrix_png(cm: Any, class_names: Optional[Sequence[str]],
                              path: str | os.PathLike, title: Optional[str] = None) -> str:
  """Renders the row-normalised heat map of ``[C, C]`` counts ``cm`` (rows true) to PNG ``path``."""
  # Imported lazily: matplotlib is only needed when a figure is written.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  cm = np.asarray(cm)
  num_classes = cm.shape[0]
  names = _class_names(class_names, num_classes)
  support = cm.sum(axis=1, keepdims=True).astype(np.float64)
  normalised = np.divide(cm, support, out=np.zeros(cm.shape, np.float64), where=support > 0)

  side = float(np.clip(0.35 * num_classes + 3.0, 5.0, 24.0))
  fig = Figure(figsize=(side + 1.5, side), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
  ax.set(xlabel="predicted class", ylabel="true class")
  if title:
    ax.set_title(title)

  named = num_classes <= _MAX_TICK_LABELS  # else names would overlap: every 10th index
  ticks = np.arange(0, num_classes, 1 if named else 10)
  ax.set(xticks=ticks, yticks=ticks)
  if named:
    font = 8 if num_classes <= 20 else 6
    ax.set_xticklabels(names, rotation=90, fontsize=font)
    ax.set_yticklabels(names, fontsize=font)
  else:
    ax.tick_params(labelsize=8)

  if num_classes <= _MAX_ANNOTATED:
    for i in range(num_classes):
      for j in range(num_classes):
        if cm[i, j] == 0:
          continue
        value = normalised[i, j]
        ax.text(j, i, f"{100.0 * value:.0f}%\n({int(cm[i, j])})", ha="center", va="center",
                fontsize=7, color="white" if value > 0.5 else "black")

  fig.tight_layout()
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, format="png")
  return path


def format_class_table(support: Any, correct: Any,
                       class_names: Optional[Sequence[str]] = None) -> str:
  """Plain-text table of support and top-1 accuracy per class from ``[C]`` counts.

  The last lines give the overall and the mean per-class accuracy (of classes with examples).
  """
  support = np.asarray(support, np.int64).reshape(-1)
  correct = np.asarray(correct, np.int64).reshape(-1)
  num_classes = support.shape[0]
  names = _class_names(class_names, num_classes)
  acc = _recall(correct, support)
  name_width = max([len("class")] + [len(n) for n in names])
  index_width = max(len("idx"), len(str(num_classes - 1)))
  count_width = max(len("n"), len(str(int(support.max()) if num_classes else 0)))
  header = f"{'idx':>{index_width}}  {'class':<{name_width}}  {'n':>{count_width}}  accuracy"
  lines = [header, "-" * len(header)]
  for c in range(num_classes):
    acc_text = "n/a" if np.isnan(acc[c]) else f"{acc[c]:.4f}"
    lines.append(f"{c:>{index_width}}  {names[c]:<{name_width}}  "
                 f"{int(support[c]):>{count_width}}  {acc_text:>8}")
  total = int(support.sum())
  overall = int(correct.sum()) / total if total else float("nan")
  present = acc[~np.isnan(acc)]
  mean_acc = float(present.mean()) if present.size else float("nan")
  lines += ["-" * len(header), f"overall accuracy: {overall:.4f} over {total} examples",
            f"mean per-class accuracy: {mean_acc:.4f} over {present.size} classes"]
  return "\n".join(lines)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# Up to this many classes the accumulator also returns the dense [C, C] confusion matrix (8 MB
# of int64 at 1,000 classes); above it only the non-zero (true, predicted) pairs are kept.
DENSE_CONFUSION_MAX_CLASSES = 1000
# Pending (true, predicted) codes are merged into counts past this many.
_COMPACT_EVERY = 1 << 20
# What EvalAccumulator.result adds when the classes are (verb, noun) pairs.
FACTOR_METRICS = ("verb_top1", "noun_top1", "action_top1")


class EvalAccumulator:
  """Classification statistics over evaluation batches, on the host, in ``O(C + pairs)`` memory.

  The confusion matrix is kept as counts of the distinct codes ``true * C + predicted``; the
  dense ``[C, C]`` one is built in :meth:`result` when ``dense_confusion`` (default: ``C <=
  DENSE_CONFUSION_MAX_CLASSES``). With ``factors = (V, N)`` the classes are actions
  ``verb * N + noun`` scored by joint logits ``a[verb] + b[noun]`` (a two-head model's
  ``log p(verb) + log p(noun)``, also view-averaged), whose best verb is the argmax over verbs
  of the best score over nouns (likewise for nouns): :meth:`result` adds ``verb_top1``,
  ``noun_top1`` and ``action_top1``.
  """

  def __init__(self, num_classes: int, dense_confusion: Optional[bool] = None,
               factors: Optional[Tuple[int, int]] = None):
    """Creates an empty accumulator for ``num_classes`` classes."""
    if num_classes <= 0:
      raise ValueError(f"num_classes must be positive, got {num_classes}")
    self.num_classes = int(num_classes)
    self.dense_confusion = bool(self.num_classes <= DENSE_CONFUSION_MAX_CLASSES
                                if dense_confusion is None else dense_confusion)
    if factors is not None:
      factors = (int(factors[0]), int(factors[1]))
      if min(factors) <= 0 or factors[0] * factors[1] != self.num_classes:
        raise ValueError(f"factors {factors} must be positive with product "
                         f"num_classes={self.num_classes}")
    self.factors = factors
    self._count = 0
    self._top1 = self._top5 = self._loss = self._verb_top1 = self._noun_top1 = 0.0
    self._support = np.zeros(self.num_classes, np.int64)
    self._hits = np.zeros(self.num_classes, np.int64)
    self._codes = np.zeros(0, np.int64)  # Distinct true * C + predicted.
    self._code_counts = np.zeros(0, np.int64)
    self._pending: list[np.ndarray] = []
    self._num_pending = 0

  def update(self, logits: Any, labels: Any, mask: Optional[Any] = None) -> None:
    """Adds a batch: logits ``[B, C]``, integer labels ``[B]``, rows where ``mask`` is 0 skipped."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if logits.ndim != 2 or logits.shape[1] != self.num_classes:
      raise ValueError(f"logits must have shape [B, {self.num_classes}], got {logits.shape}")
    if labels.shape[0] != logits.shape[0]:
      raise ValueError(f"labels {labels.shape} do not match logits {logits.shape}")
    if mask is not None:
      keep = np.asarray(mask).reshape(-1) != 0
      if keep.shape[0] != logits.shape[0]:
        raise ValueError(f"mask has {keep.shape[0]} rows, logits have {logits.shape[0]}")
      logits, labels = logits[keep], labels[keep]
    if labels.size == 0:
      return
    if labels.min() < 0 or labels.max() >= self.num_classes:
      raise ValueError(f"labels must lie in [0, {self.num_classes})")
    rows = np.arange(labels.size)
    k = min(5, self.num_classes)
    # A label is in the top k when fewer than k classes score strictly higher.
    rank = (logits > logits[rows, labels][:, None]).sum(axis=1)
    preds = logits.argmax(axis=1)
    hit = preds == labels
    self._top1 += float(hit.sum())
    self._top5 += float((rank < k).sum())
    self._loss += float(-_log_softmax(logits)[rows, labels].sum())
    if self.factors is not None:
      num_verbs, num_nouns = self.factors
      joint = logits.reshape(-1, num_verbs, num_nouns)
      verbs, nouns = np.divmod(labels, num_nouns)
      self._verb_top1 += float((joint.max(axis=2).argmax(axis=1) == verbs).sum())
      self._noun_top1 += float((joint.max(axis=1).argmax(axis=1) == nouns).sum())
    self._count += int(labels.size)
    self._support += np.bincount(labels, minlength=self.num_classes)
    self._hits += np.bincount(labels[hit], minlength=self.num_classes)
    self._pending.append(labels * self.num_classes + preds)
    self._num_pending += labels.size
    if self._num_pending >= _COMPACT_EVERY:
      self._compact()

  def _compact(self) -> None:
    if not self._pending:
      return
    codes = np.concatenate([self._codes] + self._pending)
    counts = np.concatenate([self._code_counts] +
                            [np.ones(p.size, np.int64) for p in self._pending])
    self._codes, inverse = np.unique(codes, return_inverse=True)
    self._code_counts = np.bincount(inverse.reshape(-1), weights=counts).astype(np.int64)
    self._pending, self._num_pending = [], 0

  def confusion_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero confusion cells ``(true, predicted, count)``, int64 ``[P]``, sorted by cell."""
    self._compact()
    true, pred = np.divmod(self._codes, self.num_classes)
    return true, pred, self._code_counts.copy()

  def dense_confusion_matrix(self) -> np.ndarray:
    """``np.int64 [C, C]`` confusion matrix (rows true, columns predicted), built now."""
    self._compact()
    flat = np.zeros(self.num_classes * self.num_classes, np.int64)
    flat[self._codes] = self._code_counts
    return flat.reshape(self.num_classes, self.num_classes)

  def result(self) -> dict[str, Any]:
    """The metrics of every example seen so far (scalars ``nan`` when none was).

    Returns:
      ``top1``, ``top5``, ``loss`` (mean unsmoothed cross-entropy), ``num_examples``,
      ``support`` and ``correct`` (int64 ``[C]`` examples and top-1 hits per true class),
      ``per_class_accuracy``, ``confusion_pairs``, ``confusion_matrix`` (dense ``[C, C]``, or
      None) and, with ``factors``, ``verb_top1``, ``noun_top1`` and ``action_top1`` (= ``top1``).
    """
    n = self._count
    scale = (1.0 / n) if n else float("nan")
    out = {"top1": self._top1 * scale, "top5": self._top5 * scale, "loss": self._loss * scale,
           "num_examples": n, "support": self._support.copy(), "correct": self._hits.copy(),
           "per_class_accuracy": _recall(self._hits, self._support),
           "confusion_pairs": self.confusion_pairs(),
           "confusion_matrix": self.dense_confusion_matrix() if self.dense_confusion else None}
    if self.factors is not None:
      out.update(verb_top1=self._verb_top1 * scale, noun_top1=self._noun_top1 * scale,
                 action_top1=self._top1 * scale)
    return out
