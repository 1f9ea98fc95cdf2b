"""Combining the predictions of several test views of one video."""

from __future__ import annotations

from typing import Any


def average_view_logits(logits: Any, num_views: int) -> Any:
  """Averages the logits of each video's views.

  Works on numpy and JAX arrays alike (only ``reshape``/``mean`` are used), so
  it can run inside a jitted eval step.

  Args:
    logits: ``[b * V, C]`` with the ``V`` views of a video adjacent (the
      layout of ``inputs.reshape(b * V, ...)`` for ``inputs`` of shape
      ``[b, V, ...]``), or ``[b, V, C]``.
    num_views: ``V``.

  Returns:
    ``[b, C]`` mean over views.

  Raises:
    ValueError: if the shape does not match ``num_views``.
  """
  if num_views < 1:
    raise ValueError(f"num_views must be >= 1, got {num_views}")
  if logits.ndim == 3:
    if logits.shape[1] != num_views:
      raise ValueError(
          f"logits of shape {tuple(logits.shape)} have {logits.shape[1]} "
          f"views, expected {num_views}")
    return logits.mean(axis=1)
  if logits.ndim != 2 or logits.shape[0] % num_views:
    raise ValueError(
        f"logits must be [b * {num_views}, C] or [b, {num_views}, C], got "
        f"shape {tuple(logits.shape)}")
  return logits.reshape(
      (logits.shape[0] // num_views, num_views, logits.shape[1])).mean(axis=1)
