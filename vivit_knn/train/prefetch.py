"""Global batches built and sent to the devices while the previous steps run."""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, Optional

from jax.sharding import Mesh

from vivit_knn.train.sharding import shard_batch

_POLL_S = 0.1  # how often a blocked producer looks whether the consumer has gone
_JOIN_S = 60.0


class DevicePrefetcher:
  """Iterates `shard_batch(b, mesh)` for each `b` of `batches`, up to `size` batches ahead.

  One background thread reads `batches` and transfers each batch, so the transfer overlaps
  the steps already dispatched; the order is that of `batches`. flax's `prefetch_to_device`
  is not used: it lays batches out per device for `pmap`, while the steps take global arrays
  on the mesh. An error of the producer is raised by the `next` that would have returned
  its batch. `size=0` builds each batch when it is asked for, on the caller's thread.
  """

  def __init__(self, batches: Iterator[dict], mesh: Mesh, size: int = 2):
    self._batches, self._mesh, self._size = batches, mesh, size
    self._queue: queue.Queue = queue.Queue(maxsize=max(size, 1))
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    if size > 0:
      self._thread = threading.Thread(target=self._produce, name="device-prefetch", daemon=True)
      self._thread.start()

  def __iter__(self) -> "DevicePrefetcher":
    return self

  def __next__(self) -> dict:
    if self._thread is None:
      return shard_batch(next(self._batches), self._mesh)
    batch, error = self._queue.get()
    if error is not None:
      raise error
    return batch

  def _produce(self) -> None:
    try:
      for batch in self._batches:
        if not self._put((shard_batch(batch, self._mesh), None)):
          return
      self._put((None, StopIteration()))
    except BaseException as err:  # pylint: disable=broad-except
      # Not handled here: handed to the consumer, whose `next` raises it.
      self._put((None, err))

  def _put(self, item: Any) -> bool:
    """Queues `item` unless the consumer closed first; returns whether it was queued."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_S)
        return True
      except queue.Full:
        continue
    return False

  def close(self) -> None:
    """Stops the producer and drops the batches it had built ahead."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=_JOIN_S)  # a daemon: a read stuck in storage cannot hold the exit
      self._thread = None
