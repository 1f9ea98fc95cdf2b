"""Orbax checkpoints of the train state: periodic saves, keep-N, restore onto shardings."""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


def resolve(workdir: str) -> epath.Path:
  """The workdir as a path Orbax can use: absolute if local, untouched if remote (gs://...)."""
  if "://" in str(workdir):
    return epath.Path(workdir)
  return epath.Path(os.path.abspath(workdir))


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (carrying each leaf's sharding) to restore `tree`'s layout into."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def item_path(workdir: str, step: int) -> epath.Path:
  """Directory of the train state saved at `step` under `workdir`."""
  return resolve(workdir) / "checkpoints" / str(step) / "default"


def restore_on_host(path: epath.Path) -> Any:
  """Restores a saved pytree as host numpy arrays, whatever mesh or devices wrote it.

  For inference, weight export and tests; training restores onto shardings instead.
  """
  path = epath.Path(path)
  tree = ocp.PyTreeCheckpointHandler().metadata(path).tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


class Checkpointer:
  """Saves the train state under `<workdir>/checkpoints/<step>` and restores the latest one.

  Saves are asynchronous; `close()` (or `wait()`) blocks until they are on disk.
  """

  def __init__(self, workdir: str, *, keep: int = 3, save_every: int = 1):
    self.directory = str(resolve(workdir) / "checkpoints")
    self.save_every = save_every
    # The interval is applied here: Orbax's own policy would also save the first step.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    """The newest finished checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list:
    """Steps of every kept checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves `state` at `step` when it is a multiple of `save_every` (or `force`).

    Returns whether a save was started.
    """
    if not force and step % self.save_every:
      return False
    if step == self.latest_step():
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores `step` (default latest) into the structure, dtypes and shardings of `target`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint found in {self.directory}")
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
