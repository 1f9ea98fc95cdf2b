"""Training logs: TensorBoard scalar/text writer, console progress bar and a reader.

TensorFlow is imported lazily, only when an enabled writer first writes or
when event files are read, so importing this module stays cheap. Summaries
are written with the core ``tf.summary.write`` op plus the plugin metadata the
TensorBoard scalar and text dashboards expect, so writing does not require the
``tensorboard`` package (which ``tensorflow-cpu`` does not install).
"""

from __future__ import annotations

import glob
import math
import os
import sys
from typing import Any, Mapping, Optional, TextIO

__all__ = ["MetricWriter", "ProgressBar", "read_scalars", "read_text"]


def _import_tf() -> Any:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf

  return tf


def _plugin_metadata(tf: Any, plugin_name: str) -> bytes:
  metadata = tf.compat.v1.SummaryMetadata()
  metadata.plugin_data.plugin_name = plugin_name
  return metadata.SerializeToString()


class MetricWriter:
  """Writes scalars and text to TensorBoard event files under ``logdir``.

  The event file is created on the first write. With ``enabled=False`` (use
  this on non-zero processes in multi-host runs) or ``logdir=None`` every
  method is a no-op and nothing touches the file system.
  """

  def __init__(self, logdir: Optional[str | os.PathLike], enabled: bool = True):
    """Creates the writer; no file is opened until something is written."""
    self.logdir = None if logdir is None else os.fspath(logdir)
    self.enabled = bool(enabled) and self.logdir is not None
    self._writer = None

  def _get_writer(self) -> Any:
    if self._writer is None:
      tf = _import_tf()
      os.makedirs(self.logdir, exist_ok=True)
      self._writer = tf.summary.create_file_writer(self.logdir)
    return self._writer

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs each ``tag -> value`` at ``step``; values may be numpy/jax scalars."""
    if not self.enabled or not scalars:
      return
    tf = _import_tf()
    writer = self._get_writer()
    metadata = _plugin_metadata(tf, "scalars")
    with writer.as_default():
      for tag, value in scalars.items():
        tf.summary.write(
            str(tag), tf.constant(float(value), tf.float32), step=int(step), metadata=metadata
        )

  def write_text(self, step: int, tag: str, text: str) -> None:
    """Logs a text string (rendered as markdown by TensorBoard) at ``step``."""
    if not self.enabled:
      return
    tf = _import_tf()
    writer = self._get_writer()
    with writer.as_default():
      tf.summary.write(
          str(tag), tf.constant(str(text)), step=int(step), metadata=_plugin_metadata(tf, "text")
      )

  def flush(self) -> None:
    """Flushes pending events to disk."""
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file; later writes open a new one."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


def _format_postfix(value: Any) -> str:
  if isinstance(value, str):
    return value
  try:
    number = float(value)
  except (TypeError, ValueError):
    return str(value)
  if number != 0.0 and math.isfinite(number) and (abs(number) < 1e-3 or abs(number) >= 1e5):
    return f"{number:.3e}"
  return f"{number:.4g}"


class ProgressBar:
  """Console progress bar (ETA and it/s) with scalar values in the postfix.

  A thin wrapper over ``tqdm``; with ``enabled=False`` nothing is printed.
  """

  def __init__(
      self,
      total: Optional[int],
      initial: int = 0,
      desc: Optional[str] = None,
      enabled: bool = True,
      *,
      unit: str = "step",
      file: Optional[TextIO] = None,
  ):
    """Creates the bar; ``initial`` is the starting count when resuming."""
    from tqdm import tqdm

    self.enabled = bool(enabled)
    self._bar = tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        file=file if file is not None else sys.stderr,
        disable=not self.enabled,
    )

  @property
  def n(self) -> int:
    """Current count."""
    return int(self._bar.n)

  def update(self, n: int = 1, **postfix: Any) -> None:
    """Advances by ``n`` and shows ``postfix`` (e.g. ``loss=..., lr=...``)."""
    if not self.enabled:
      return
    if postfix:
      self._bar.set_postfix({k: _format_postfix(v) for k, v in postfix.items()}, refresh=False)
    self._bar.update(n)

  def write(self, message: str) -> None:
    """Prints a line without breaking the bar."""
    if self.enabled:
      self._bar.write(message, file=self._bar.fp)

  def close(self) -> None:
    """Closes the bar."""
    self._bar.close()

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


def _event_files(logdir: str | os.PathLike) -> list[str]:
  logdir = os.fspath(logdir)
  if not os.path.isdir(logdir):
    raise FileNotFoundError(f"log directory does not exist: {logdir}")
  pattern = os.path.join(glob.escape(logdir), "**", "*tfevents*")
  return sorted(glob.glob(pattern, recursive=True))


def _iter_values(logdir: str | os.PathLike):
  tf = _import_tf()
  for path in _event_files(logdir):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      if not event.HasField("summary"):
        continue
      for value in event.summary.value:
        yield tf, int(event.step), value


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """Reads scalar summaries from all event files under ``logdir`` (recursively).

  Returns:
    ``{tag: [(step, value), ...]}`` with each list sorted by step (stable for
    repeated steps).

  Raises:
    FileNotFoundError: if ``logdir`` does not exist.
  """
  out: dict[str, list[tuple[int, float]]] = {}
  for tf, step, value in _iter_values(logdir):
    kind = value.WhichOneof("value")
    if kind == "simple_value":
      number = float(value.simple_value)
    elif kind == "tensor":
      plugin = value.metadata.plugin_data.plugin_name
      if plugin and plugin != "scalars":
        continue
      array = tf.make_ndarray(value.tensor)
      if array.size != 1 or array.dtype.kind not in "fiu":
        continue
      number = float(array.reshape(()))
    else:
      continue
    out.setdefault(value.tag, []).append((step, number))
  return {tag: sorted(points, key=lambda p: p[0]) for tag, points in out.items()}


def read_text(logdir: str | os.PathLike) -> dict[str, list[tuple[int, str]]]:
  """Reads text summaries under ``logdir``: ``{tag: [(step, text), ...]}`` sorted by step."""
  out: dict[str, list[tuple[int, str]]] = {}
  for tf, step, value in _iter_values(logdir):
    if value.WhichOneof("value") != "tensor" or value.metadata.plugin_data.plugin_name != "text":
      continue
    array = tf.make_ndarray(value.tensor)
    item = array.reshape(-1)[0] if array.size else b""
    text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    out.setdefault(value.tag, []).append((step, text))
  return {tag: sorted(points, key=lambda p: p[0]) for tag, points in out.items()}
