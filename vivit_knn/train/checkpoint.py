"""Orbax checkpoints of the train state: periodic saves, keep-N, verified restore with fallback.

Integrity: Orbax stores arrays through TensorStore but records no checksum of
their values, so a flipped bit in a data file can restore silently. Each save
therefore also writes `<step>/checksums.json`: two 32-bit fingerprints per
array (the wrapping sums of its raw bits, plain and weighted by position),
computed on device, so sharded arrays need no gathering. A restore recomputes
them and compares. A step that Orbax cannot read or that fails verification is
skipped with a one-line warning and the next older step is tried; only when no
step is readable does the restore stop, naming the folder. A config whose
parameter shapes differ from the checkpoint's is not a damaged checkpoint: it
is refused with the differing parameters listed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from vivit_knn.weights.tree import key_name

CHECKSUMS = "checksums.json"
MAX_MISMATCH_LINES = 10


class CheckpointError(RuntimeError):
  """No checkpoint in the folder could be read and verified."""


class CheckpointMismatchError(ValueError):
  """The model the config builds does not fit the checkpoint (one line per parameter)."""


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


def _fingerprint(x: jax.Array) -> jax.Array:
  """Two wrapping uint32 sums of the raw bits of `x`: plain and weighted by position + 1."""
  x = jnp.asarray(x).reshape(-1)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    width = jnp.dtype(x.dtype).itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[width]
    if width == 8:  # two 32-bit words per element
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    else:
      bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  weights = jnp.arange(1, bits.shape[0] + 1, dtype=jnp.uint32)
  return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)])


@jax.jit
def _fingerprints(tree: Any) -> Any:
  return jax.tree.map(_fingerprint, tree)


def fingerprints(tree: Any) -> Dict[str, List[int]]:
  """`{path: [sum, weighted sum]}` of every array in `tree` (see the module doc)."""
  prints = jax.device_get(_fingerprints(tree))
  return {key_name(kp): [int(v) for v in np.asarray(value)]
          for kp, value in jax.tree_util.tree_leaves_with_path(prints)}


def _shape_mismatches(stored: Any, target: Any) -> List[str]:
  """Lines `params/<path>: stored (..), requested (..)` where the two trees' params differ."""
  def shapes(tree):
    return {key_name(kp): tuple(getattr(v, "shape", ()))
            for kp, v in jax.tree_util.tree_leaves_with_path(tree)}
  have, want = shapes(stored), shapes(target)
  lines = []
  for path in sorted(set(have) | set(want)):
    a, b = have.get(path), want.get(path)
    if a != b:
      lines.append(f"params/{path}: stored {'absent' if a is None else a}, "
                   f"requested {'absent' if b is None else b}")
  return lines


def has_checkpoints(workdir: str) -> bool:
  """Whether `<workdir>/checkpoints` holds a finished checkpoint (creates nothing).

  Only looks at names: Orbax writes a step under a temporary name and renames it
  to the bare step number when it is complete. No CheckpointManager is opened,
  because opening one synchronises all processes, and in a multi-process run the
  others may already be creating theirs.
  """
  directory = resolve(workdir) / "checkpoints"
  if not directory.is_dir():
    return False
  return any(p.name.isdigit() and p.is_dir() for p in directory.iterdir())


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
    self._pending: Dict[int, Dict[str, List[int]]] = {}
    self.restored_step: Optional[int] = None
    self.damaged_steps: List[int] = []

  def latest_step(self) -> Optional[int]:
    """The newest finished checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list:
    """Steps of every kept checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves `state` at `step` when it is a multiple of `save_every` (or `force`).

    The save runs asynchronously; its checksums are written once it is on disk
    (at the next save, `wait()` or `close()`). Returns whether a save was started.
    """
    if not force and step % self.save_every:
      return False
    if step == self.latest_step():
      return False
    self._write_pending_checksums()
    prints = fingerprints(state)
    started = self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if started:
      self._pending[step] = prints
    return started

  def _write_pending_checksums(self) -> None:
    if not self._pending:
      return
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      for step, prints in self._pending.items():
        path = epath.Path(self.directory) / str(step)
        if path.exists():  # not already rotated out by keep-N
          (path / CHECKSUMS).write_text(json.dumps(prints))
    self._pending = {}

  def _stored_params(self, step: int) -> Any:
    tree = ocp.PyTreeCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "default").tree
    return tree["params"] if isinstance(tree, dict) and "params" in tree else tree

  def _verify(self, step: int, restored: Any) -> Optional[str]:
    """None when the restored arrays match the step's checksums, else the reason."""
    path = epath.Path(self.directory) / str(step) / CHECKSUMS
    if not path.exists():
      logging.warning("checkpoint step %d has no %s (written by an older version, or "
                      "interrupted): restoring it unverified", step, CHECKSUMS)
      return None
    try:
      stored = json.loads(path.read_text())
    except ValueError:
      return f"{CHECKSUMS} is damaged"
    actual = fingerprints(restored)
    bad = [k for k in stored if actual.get(k) != stored[k]]
    if bad or set(actual) != set(stored):
      first = bad[0] if bad else sorted(set(actual) ^ set(stored))[0]
      return f"checksum mismatch in {len(bad) or 1} arrays (first: {first})"
    return None

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores into the structure, dtypes and shardings of `target`, verified.

    With `step` None the newest readable step is used: a step Orbax cannot read
    or whose checksums fail is skipped with a warning, falling back to the next
    older one. Raises `CheckpointMismatchError` when the parameter shapes differ
    from the checkpoint's and `CheckpointError` when no step can be used.
    """
    steps = sorted(self._manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise FileNotFoundError(f"No checkpoint found in {self.directory}")
    failures = []
    with _orbax_quiet():
      return self._restore_first_good(target, steps, failures)

  def _restore_first_good(self, target: Any, steps: List[int], failures: list) -> Any:
    for candidate in steps:
      try:
        stored = self._stored_params(candidate)
      except Exception as err:  # pylint: disable=broad-except
        failures.append((candidate, f"its metadata is unreadable: {_short(err)}"))
        self._warn_fallback(candidate, failures[-1][1], steps)
        continue
      mismatch = _shape_mismatches(stored, getattr(target, "params", target))
      if mismatch:
        shown = mismatch[:MAX_MISMATCH_LINES]
        more = len(mismatch) - len(shown)
        raise CheckpointMismatchError(
            f"the model this config builds does not fit checkpoint step {candidate} in "
            f"{self.directory}:\n  " + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more else ""))
      try:
        restored = self._manager.restore(
            candidate, args=ocp.args.StandardRestore(abstract_like(target)))
        reason = self._verify(candidate, restored)
      except Exception as err:  # pylint: disable=broad-except
        reason = f"its array data is unreadable: {_short(err)}"
      if reason is None:
        self.restored_step = candidate
        return restored
      failures.append((candidate, reason))
      self._warn_fallback(candidate, reason, steps)
    raise CheckpointError(
        f"no readable checkpoint in {self.directory}: "
        + "; ".join(f"step {s}: {r}" for s, r in failures))

  def _warn_fallback(self, step: int, reason: str, steps: List[int]) -> None:
    older = [s for s in steps if s < step]
    then = f"falling back to step {older[0]}" if older else "no older step left"
    self.damaged_steps.append(step)
    if jax.process_index() == 0:
      print(f"warning: checkpoint step {step} in {self.directory} cannot be used ({reason}); "
            f"{then}", file=sys.stderr, flush=True)

  def set_aside_damaged(self) -> None:
    """Moves the steps a restore skipped to `<workdir>/checkpoints_damaged/`, kept for study.

    Training calls this after falling back, so that it can save those steps anew.
    """
    if not self.damaged_steps:
      return
    self.wait()
    if jax.process_index() == 0:
      aside = epath.Path(self.directory).parent / "checkpoints_damaged"
      aside.mkdir(parents=True, exist_ok=True)
      for step in self.damaged_steps:
        target = aside / str(step)
        if target.exists():
          target = aside / f"{step}.{len(list(aside.iterdir()))}"
        (epath.Path(self.directory) / str(step)).rename(target)
        logging.warning("moved damaged checkpoint step %d to %s", step, target)
    self.damaged_steps = []
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves (and their checksums) are on disk."""
    self._manager.wait_until_finished()
    self._write_pending_checksums()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self.wait()
    self._manager.close()


@contextlib.contextmanager
def _orbax_quiet():
  """Silences Orbax's own error logs (pages of traceback) while damaged steps are tried.

  The fallback warnings say what happened, in one line each.
  """
  previous, hook = logging.get_verbosity(), sys.excepthook
  if previous < logging.DEBUG:
    logging.set_verbosity(logging.FATAL)
    # TensorStore's callbacks into a closed asyncio loop print through sys.excepthook.
    sys.excepthook = lambda *args: None
  try:
    yield
  finally:
    logging.set_verbosity(previous)
    sys.excepthook = hook


def _short(err: BaseException) -> str:
  """The first line of an error, shortened: Orbax/TensorStore messages run to pages."""
  text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
  text = text.split(" See full TensorStore details")[0]
  return (text[:120] + "...") if len(text) > 120 else text
