"""TensorBoard event files read back with TensorBoard's own reader, for the tests."""

import os

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.util import tensor_util


def _load(logdir):
  logdir = os.fspath(logdir)
  if not os.path.isdir(logdir):
    raise FileNotFoundError(f"log directory does not exist: {logdir}")
  # Everything, from every event file of the folder (a resumed run adds one per run).
  acc = ea.EventAccumulator(logdir, size_guidance={ea.TENSORS: 0, ea.SCALARS: 0},
                            purge_orphaned_data=False)
  return acc.Reload()


def _tensors(acc, plugin):
  for tag in acc.Tags()[ea.TENSORS]:
    if acc.SummaryMetadata(tag).plugin_data.plugin_name == plugin:
      yield tag, [(e.step, tensor_util.make_ndarray(e.tensor_proto).item())
                  for e in acc.Tensors(tag)]


def read_scalars(logdir):
  """`{tag: [(step, value), ...]}` of the scalars in `logdir`'s event files, sorted by step."""
  acc = _load(logdir)
  out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()[ea.SCALARS]}
  for tag, points in _tensors(acc, "scalars"):
    out.setdefault(tag, []).extend((step, float(value)) for step, value in points)
  return {tag: sorted(points, key=lambda p: p[0]) for tag, points in out.items()}


def read_text(logdir):
  """`{tag: [(step, text), ...]}` of the text summaries in `logdir`'s event files."""
  return {tag: sorted(((step, value.decode()) for step, value in points), key=lambda p: p[0])
          for tag, points in _tensors(_load(logdir), "text")}


def has_scalar(logdir, tag):
  """Whether `logdir` exists and its event files hold scalar `tag` yet (a run writes them
  from its start, so their existence says nothing)."""
  return os.path.isdir(logdir) and tag in read_scalars(logdir)
