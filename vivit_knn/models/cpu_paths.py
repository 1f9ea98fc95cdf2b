"""The switch between CPU-tuned (looped, cache-sized) and one-piece attention and k-NN search.

Inside `disabled()`, both run in one piece on every backend, and attention's 'auto'
path stays one-piece: cost analysis needs that form, since XLA counts a loop body once.
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
