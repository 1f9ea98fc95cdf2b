"""Classification metrics: top-k accuracy, confusion matrices and reports.

:func:`topk_correct` is jit-able and meant for the device-side eval step; the
rest runs on the host with numpy on gathered predictions.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "topk_correct",
    "confusion_matrix",
    "per_class_accuracy",
    "save_confusion_matrix_png",
    "format_per_class_report",
    "format_class_table",
    "EvalAccumulator",
    "DENSE_CONFUSION_MAX_CLASSES",
    "FACTOR_METRICS",
]

# Above this many classes the per-class tick labels overlap, so they are hidden.
_MAX_TICK_LABELS = 50
# Up to this many classes every cell is annotated with its value.
_MAX_ANNOTATED = 20


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Whether each label is among the ``k`` highest logits.

  Args:
    logits: ``[B, C]`` scores.
    labels: ``[B]`` integer class ids.
    k: number of top predictions considered; clipped to ``C``.

  Returns:
    float32 ``[B]`` array of 0/1 values.
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  k = min(int(k), logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  hit = jnp.any(top == jnp.asarray(labels)[..., None].astype(top.dtype), axis=-1)
  return hit.astype(jnp.float32)


def confusion_matrix(
    preds: Any, labels: Any, num_classes: int, weights: Optional[Any] = None
) -> np.ndarray:
  """Counts (true, predicted) pairs.

  Args:
    preds: ``[N]`` predicted class ids.
    labels: ``[N]`` true class ids.
    num_classes: ``C``.
    weights: optional ``[N]`` non-negative integer counts, typically a 0/1
      validity mask; rows with weight 0 are ignored.

  Returns:
    ``np.int64`` array ``[C, C]``; rows are true classes, columns predictions.
  """
  preds = np.asarray(preds).reshape(-1).astype(np.int64)
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  if preds.shape != labels.shape:
    raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ in length")
  if weights is None:
    counts = np.ones(labels.shape, np.int64)
  else:
    w = np.asarray(weights).reshape(-1)
    if w.shape != labels.shape:
      raise ValueError(f"weights {w.shape} must match labels {labels.shape}")
    if np.any(w < 0) or np.any(w != np.round(w)):
      raise ValueError("confusion_matrix weights must be non-negative integers (e.g. a 0/1 mask)")
    counts = w.astype(np.int64)
  keep = counts > 0
  preds, labels, counts = preds[keep], labels[keep], counts[keep]
  for name, arr in (("labels", labels), ("preds", preds)):
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
      raise ValueError(
          f"{name} must lie in [0, {num_classes}), got range [{arr.min()}, {arr.max()}]")
  # Integer counts: one int64 [C * C] array, no float copy.
  flat = np.bincount(np.repeat(labels * num_classes + preds, counts),
                     minlength=num_classes * num_classes)
  return flat.astype(np.int64, copy=False).reshape(num_classes, num_classes)


def _recall(correct: np.ndarray, support: np.ndarray) -> np.ndarray:
  """``correct / support`` per class as float64; ``nan`` where a class has no examples."""
  with np.errstate(invalid="ignore", divide="ignore"):
    acc = np.asarray(correct, np.float64) / support
  return np.where(support > 0, acc, np.nan)


def per_class_accuracy(cm: Any) -> np.ndarray:
  """Recall per true class: ``cm[c, c] / cm[c].sum()``; ``nan`` where a class has no examples."""
  cm = np.asarray(cm, np.float64)
  return _recall(np.diag(cm), cm.sum(axis=1))


def _class_names(class_names: Optional[Sequence[str]], num_classes: int) -> list[str]:
  if class_names is None:
    return [str(i) for i in range(num_classes)]
  names = [str(n) for n in class_names]
  if len(names) != num_classes:
    raise ValueError(f"got {len(names)} class names for {num_classes} classes")
  return names


def save_confusion_matrix_png(
    cm: Any,
    class_names: Optional[Sequence[str]],
    path: str | os.PathLike,
    title: Optional[str] = None,
) -> str:
  """Renders a row-normalised confusion matrix heat map to a PNG file.

  Each row is divided by its number of examples so colours show the
  fraction of a true class assigned to each prediction. Class names label
  the axes for up to 50 classes; for more they are hidden and only every
  10th class index is marked. With at most 20 classes every cell is
  annotated with its percentage and raw count.
  Rendering uses the Agg canvas directly, so no display is needed and the
  global pyplot backend is left untouched.

  Args:
    cm: ``[C, C]`` counts (rows true, columns predicted).
    class_names: ``C`` names, or ``None`` to use class indices.
    path: output file; parent directories are created.
    title: optional figure title.

  Returns:
    ``path`` as a string.
  """
  # Imported lazily: matplotlib is only needed when a figure is written.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  cm = np.asarray(cm)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
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
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  if title:
    ax.set_title(title)

  if num_classes <= _MAX_TICK_LABELS:
    ticks = np.arange(num_classes)
    font = 8 if num_classes <= 20 else 6
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=90, fontsize=font)
    ax.set_yticklabels(names, fontsize=font)
  else:
    # Names would overlap; mark every 10th class index instead.
    ticks = np.arange(0, num_classes, 10)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.tick_params(labelsize=8)

  if num_classes <= _MAX_ANNOTATED:
    for i in range(num_classes):
      for j in range(num_classes):
        if cm[i, j] == 0:
          continue
        value = normalised[i, j]
        ax.text(
            j,
            i,
            f"{100.0 * value:.0f}%\n({int(cm[i, j])})",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > 0.5 else "black",
        )

  fig.tight_layout()
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, format="png")
  return path


def format_per_class_report(cm: Any, class_names: Optional[Sequence[str]] = None) -> str:
  """Plain-text table of per-class support and accuracy, in class-index order.

  The last lines give the overall accuracy and the mean of the per-class
  accuracies over classes that have examples.
  """
  cm = np.asarray(cm)
  return format_class_table(cm.sum(axis=1), np.diag(cm), class_names)


def format_class_table(support: Any, correct: Any,
                       class_names: Optional[Sequence[str]] = None) -> str:
  """:func:`format_per_class_report` from per-class counts, without a ``[C, C]`` matrix.

  Args:
    support: ``[C]`` examples per true class.
    correct: ``[C]`` top-1 hits per true class.
    class_names: ``C`` names, or ``None`` for class indices.
  """
  support = np.asarray(support, np.int64).reshape(-1)
  correct = np.asarray(correct, np.int64).reshape(-1)
  if support.shape != correct.shape:
    raise ValueError(f"support {support.shape} and correct {correct.shape} differ")
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
    lines.append(
        f"{c:>{index_width}}  {names[c]:<{name_width}}  "
        f"{int(support[c]):>{count_width}}  {acc_text:>8}"
    )
  total = int(support.sum())
  overall = int(correct.sum()) / total if total else float("nan")
  present = acc[~np.isnan(acc)]
  mean_acc = float(present.mean()) if present.size else float("nan")
  lines.append("-" * len(header))
  lines.append(f"overall accuracy: {overall:.4f} over {total} examples")
  lines.append(f"mean per-class accuracy: {mean_acc:.4f} over {present.size} classes")
  return "\n".join(lines)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# Up to this many classes the accumulator also returns the dense [C, C]
# confusion matrix (8 MB of int64 at 1,000 classes); above it only the
# non-zero (true, predicted) pairs are kept, so memory grows with the number
# of examples, not with C squared.
DENSE_CONFUSION_MAX_CLASSES = 1000
# Pending (true, predicted) codes are merged into counts past this many.
_COMPACT_EVERY = 1 << 20
# What EvalAccumulator.result adds when the classes are (verb, noun) pairs.
FACTOR_METRICS = ("verb_top1", "noun_top1", "action_top1")


class EvalAccumulator:
  """Accumulates classification statistics over evaluation batches on the host.

  Call :meth:`update` with each batch's logits, integer labels and validity
  mask (padding rows have mask 0 and are ignored), then :meth:`result`.

  Memory is ``O(C + distinct (true, predicted) pairs)``: per-class support and
  hits are ``[C]`` counts and the confusion matrix is kept sparse, as counts
  of the codes ``true * C + predicted``. The dense ``[C, C]`` matrix is built
  once, in :meth:`result`, and only when ``dense_confusion`` allows it.

  With ``factors = (V, N)`` the classes are (verb, noun) actions, class
  ``verb * N + noun``, and the logits are joint scores ``a[verb] + b[noun]``
  (a two-head model's ``log p(verb) + log p(noun)``, also after averaging
  views). Such scores are maximised by the verb and the noun that maximise
  their own terms, so the predicted verb is the argmax over verbs of the best
  score over nouns (likewise for nouns), and :meth:`result` also gives
  ``verb_top1``, ``noun_top1`` and ``action_top1`` (the plain top-1).

  Args:
    num_classes: ``C``.
    dense_confusion: whether :meth:`result` returns the dense confusion
      matrix; ``None`` = when ``C <= DENSE_CONFUSION_MAX_CLASSES``.
    factors: optional ``(num_verbs, num_nouns)`` whose product is ``C``.
  """

  def __init__(self, num_classes: int, dense_confusion: Optional[bool] = None,
               factors: Optional[Tuple[int, int]] = None):
    """Creates an empty accumulator for ``num_classes`` classes."""
    if num_classes <= 0:
      raise ValueError(f"num_classes must be positive, got {num_classes}")
    self.num_classes = int(num_classes)
    if dense_confusion is None:
      dense_confusion = self.num_classes <= DENSE_CONFUSION_MAX_CLASSES
    self.dense_confusion = bool(dense_confusion)
    if factors is not None:
      factors = (int(factors[0]), int(factors[1]))
      if min(factors) <= 0 or factors[0] * factors[1] != self.num_classes:
        raise ValueError(f"factors {factors} must be positive with product "
                         f"num_classes={self.num_classes}")
    self.factors = factors
    self.reset()

  def reset(self) -> None:
    """Clears all accumulated statistics."""
    self._count = 0
    self._top1 = 0.0
    self._top5 = 0.0
    self._loss = 0.0
    self._verb_top1 = 0.0
    self._noun_top1 = 0.0
    self._support = np.zeros(self.num_classes, np.int64)
    self._hits = np.zeros(self.num_classes, np.int64)
    self._codes = np.zeros(0, np.int64)  # Distinct true * C + predicted.
    self._code_counts = np.zeros(0, np.int64)
    self._pending: list[np.ndarray] = []
    self._num_pending = 0

  def update(self, logits: Any, labels: Any, mask: Optional[Any] = None) -> None:
    """Adds a batch.

    Args:
      logits: ``[B, C]`` scores (numpy or a fully addressable jax array).
      labels: ``[B]`` integer class ids.
      mask: optional ``[B]`` validity mask; rows where it is 0 are skipped.
    """
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
    label_scores = logits[rows, labels]
    rank = (logits > label_scores[:, None]).sum(axis=1)
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
    """Merges the pending codes into the distinct-code counts."""
    if not self._pending:
      return
    codes = np.concatenate([self._codes] + self._pending)
    counts = np.concatenate([self._code_counts] +
                            [np.ones(p.size, np.int64) for p in self._pending])
    self._codes, inverse = np.unique(codes, return_inverse=True)
    self._code_counts = np.bincount(inverse.reshape(-1), weights=counts).astype(np.int64)
    self._pending, self._num_pending = [], 0

  def confusion_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero cells of the confusion matrix: ``(true, predicted, count)``, int64 ``[P]``.

    Sorted by true class, then predicted class.
    """
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
    """The metrics of every example seen so far.

    Returns:
      ``top1``, ``top5``, ``loss`` (mean unsmoothed cross-entropy),
      ``num_examples``, ``support`` and ``correct`` (int64 ``[C]``: examples
      and top-1 hits per true class), ``per_class_accuracy``,
      ``confusion_pairs`` (see :meth:`confusion_pairs`) and
      ``confusion_matrix``: the dense ``[C, C]`` counts when
      ``dense_confusion``, else ``None``. With ``factors``, also
      ``verb_top1``, ``noun_top1`` and ``action_top1`` (equal to ``top1``).
      Scalar metrics are ``nan`` when no examples were seen.
    """
    n = self._count
    scale = (1.0 / n) if n else float("nan")
    factored = {}
    if self.factors is not None:
      factored = {"verb_top1": self._verb_top1 * scale,
                  "noun_top1": self._noun_top1 * scale,
                  "action_top1": self._top1 * scale}
    return {
        "top1": self._top1 * scale,
        "top5": self._top5 * scale,
        "loss": self._loss * scale,
        "num_examples": n,
        "support": self._support.copy(),
        "correct": self._hits.copy(),
        "per_class_accuracy": _recall(self._hits, self._support),
        "confusion_pairs": self.confusion_pairs(),
        "confusion_matrix": self.dense_confusion_matrix() if self.dense_confusion else None,
        **factored,
    }
