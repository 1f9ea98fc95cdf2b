"""The switch between CPU-tuned and one-piece evaluation of attention and k-NN search.

On the CPU backend, attention is evaluated in blocks of (batch x head) rows inside
a loop and the exact k-th-largest search runs over chunks of rows, which keeps the
working set in cache. Elsewhere (and inside `disabled()`) both run in one piece,
which computes the same function without loops; cost analysis needs that form,
since XLA counts a loop body once. Inside `disabled()`, attention's 'auto'
evaluation path also stays one-piece instead of switching to the query-blocked
path for large inputs.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax

_DISABLED = [0]  # nesting depth of active `disabled()` contexts


def enabled() -> bool:
  """Whether the CPU-tuned paths apply: on the CPU backend, outside every `disabled()`."""
  return _DISABLED[0] == 0 and jax.default_backend() == "cpu"


def one_piece_requested() -> bool:
  """Whether a `disabled()` context is active (loop-free paths asked for, on any backend)."""
  return _DISABLED[0] > 0


@contextlib.contextmanager
def disabled() -> Iterator[None]:
  """Within this context, functions traced take the one-piece (loop-free) paths on any backend."""
  _DISABLED[0] += 1
  try:
    yield
  finally:
    _DISABLED[0] -= 1
