"""Orbax checkpoints of the train state: periodic saves, keep-N, verified restore with fallback.

Integrity: Orbax stores arrays through TensorStore but records no checksum of
their values, so a flipped bit in a data file can restore silently. Each save
therefore also stores two 32-bit fingerprints per array (the wrapping sums of
its raw bits, plain and weighted by position), computed on device so sharded
arrays need no gathering, as the item `checksums` of the same Orbax save: a
step is complete (renamed from its temporary name) only with its checksums,
so a `kill -9` at any moment leaves no finished step without them. A restore
recomputes them and compares. A step that Orbax cannot read or that fails
verification is skipped with a one-line warning and the next older step is
tried; only when no step is readable does the restore stop, naming the folder.
A step without checksums (written by an older version) restores with a visible
warning, or is refused with `strict`. A config whose parameter shapes differ
from the checkpoint's is not a damaged checkpoint: it is refused with the
differing parameters listed. A step that disappears while it is read (rotated
away by a trainer saving in the same folder) is not damage either: the steps
are listed again and the newest one still there is used.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from vivit_knn.errors import CheckpointError, DiskFullError
from vivit_knn.weights.tree import key_name

DEFAULT_ITEM, CHECKSUMS_ITEM = "default", "checksums"
LEGACY_CHECKSUMS = "checksums.json"  # beside the step, written by earlier versions
STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's step metadata: it lists the step's items
# How often the steps are listed again when the one being read disappears, and how long
# a removal under way is given to end before a step that went missing parts is judged.
MAX_RELISTS = 20
_ROTATION_GRACE_S = 0.5
MAX_MISMATCH_LINES = 10


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
  return resolve(workdir) / "checkpoints" / str(step) / DEFAULT_ITEM


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


def _refuse_other_layout(stored: Any, target: Any, step: int, directory: str) -> None:
  """Raises CheckpointMismatchError when the state's arrays sit under other paths.

  E.g. an optimizer chain of another shape (written by another version or with
  other optimizer settings): a restore would fail, which is not damage.
  """
  def paths(tree):
    return {key_name(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(tree)}
  have, want = paths(stored), paths(target)
  if not (isinstance(stored, dict) and "params" in stored) or have == want:
    return
  extra, missing = sorted(have - want), sorted(want - have)
  raise CheckpointMismatchError(
      f"the train state this config builds does not fit checkpoint step {step} in "
      f"{directory}: {len(extra)} stored arrays are not in it (first: "
      f"{extra[0] if extra else '-'}) and {len(missing)} of its arrays are not stored (first: "
      f"{missing[0] if missing else '-'}); the checkpoint was written with other optimizer "
      "settings or by an older version")


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
  `read_only` (eval, inference, tools) never creates, cleans or deletes
  anything; `strict` refuses steps that carry no checksums.
  """

  def __init__(self, workdir: str, *, keep: int = 3, save_every: int = 1,
               read_only: bool = False, strict: bool = False):
    self.directory = str(resolve(workdir) / "checkpoints")
    self.save_every = save_every
    self.strict = strict
    # The interval is applied here: Orbax's own policy would also save the first step.
    # The writer (the trainer, holding the workdir lock) clears the temporary folders
    # that an interrupted save left behind.
    # A reader passes no keep-N (Orbax deletes only when it saves, but a reader must not
    # even be able to) and creates nothing; Orbax's own read_only mode warns twice per use.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        cleanup_tmp_directories=not read_only)
    handlers = {DEFAULT_ITEM: ocp.StandardCheckpointHandler(),
                CHECKSUMS_ITEM: ocp.JsonCheckpointHandler()}
    self._manager = _listing(lambda: ocp.CheckpointManager(self.directory, options=options,
                                                           item_handlers=handlers))
    self.restored_step: Optional[int] = None
    self.damaged_steps: List[int] = []

  def latest_step(self) -> Optional[int]:
    """The newest finished checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list:
    """Steps of every kept checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves `state` and its checksums at `step` when it is a multiple of `save_every` (or `force`).

    The save runs asynchronously; the step counts as complete only once both the
    state and its checksums are on disk. Returns whether a save was started.
    """
    if not force and step % self.save_every:
      return False
    if step == self.latest_step():
      return False
    args = ocp.args.Composite(**{DEFAULT_ITEM: ocp.args.StandardSave(state),
                                 CHECKSUMS_ITEM: ocp.args.JsonSave(fingerprints(state))})
    with self._disk_full_named():
      return self._manager.save(step, args=args, force=True)

  @contextlib.contextmanager
  def _disk_full_named(self):
    """Turns a full disk, met by an asynchronous save, into one error saying what is kept."""
    try:
      yield
    except (OSError, ValueError) as err:
      if not _is_disk_full(err):
        raise
      # Orbax lists a step from the start of its save: the failed one has no folder yet.
      step_dir = lambda s: epath.Path(self.directory) / str(s)
      complete = [s for s in self._manager.all_steps() if step_dir(s).exists()]
      kept = (f"the newest complete checkpoint, step {max(complete)}, is intact" if complete
              else "no checkpoint was completed")
      raise DiskFullError(f"no space left on the device for the checkpoints in {self.directory} "
                          f"({kept}): free space and rerun to resume") from None

  def _stored_tree(self, step: int) -> Any:
    return ocp.PyTreeCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / DEFAULT_ITEM).tree

  def _stored_checksums(self, step: int) -> Optional[Dict[str, Any]]:
    """The step's checksums, read before its arrays; None for a step of an older version.

    Raises:
      FileNotFoundError: the step, or checksums its metadata lists, are not there.
      ValueError: its metadata or checksums do not parse.
    """
    step_dir = epath.Path(self.directory) / str(step)
    items = json.loads((step_dir / STEP_METADATA).read_text()).get("item_handlers") or {}
    if CHECKSUMS_ITEM in items:
      path = step_dir / CHECKSUMS_ITEM / "metadata"
    elif (step_dir / LEGACY_CHECKSUMS).exists():
      path = step_dir / LEGACY_CHECKSUMS
    else:
      return None
    stored = json.loads(path.read_text())
    if not isinstance(stored, dict):
      raise ValueError("not a JSON object")
    return stored

  def _verify(self, step: int, stored: Optional[Dict[str, Any]], restored: Any
              ) -> Optional[str]:
    """None when the restored arrays match the checksums `stored`, else the reason."""
    if stored is None:
      if self.strict:
        raise CheckpointError(
            f"checkpoint step {step} in {self.directory} has no checksums (written by an "
            "older version), and strict checking refuses unverified checkpoints; rerun "
            "without --strict to restore it unverified")
      if jax.process_index() == 0:
        print(f"warning: checkpoint step {step} in {self.directory} has no checksums "
              "(written by an older version): restoring it unverified (--strict refuses it)",
              file=sys.stderr, flush=True)
      return None
    actual = fingerprints(restored)
    bad = [k for k in stored if actual.get(k) != stored[k]]
    if bad or set(actual) != set(stored):
      first = bad[0] if bad else sorted(set(actual) ^ set(stored))[0]
      return f"checksum mismatch in {len(bad) or 1} arrays (first: {first})"
    return None

  def _exists(self, step: int) -> bool:
    """Whether the step is still there, once a removal under way has had time to end."""
    path = epath.Path(self.directory) / str(step)
    if not path.exists():
      return False
    time.sleep(_ROTATION_GRACE_S)
    return path.exists()

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores into the structure, dtypes and shardings of `target`, verified.

    `target` None restores the saved tree as host numpy arrays, whatever mesh
    wrote it (inference, tools, distillation teachers), verified the same way.

    With `step` None the newest readable step is used: a step Orbax cannot read
    or whose checksums fail is skipped with a warning, falling back to the next
    older one; a step removed while it is read (by a trainer's keep-N rotation)
    makes the steps be listed again. Raises `CheckpointMismatchError` when the
    parameter shapes differ from the checkpoint's and `CheckpointError` when no
    step can be used.
    """
    failures: List[Tuple[int, str]] = []
    tried: set = set()
    with _orbax_quiet():
      for _ in range(MAX_RELISTS):
        listed = sorted(self._manager.all_steps(), reverse=True) if step is None else [step]
        if not listed and not tried:
          raise FileNotFoundError(f"No checkpoint found in {self.directory}")
        candidates = [s for s in listed if s not in tried]
        if not candidates:
          break
        for candidate in candidates:
          tried.add(candidate)
          restored, reason = self._try_restore(candidate, target)
          if reason is None:
            self.restored_step = candidate
            return restored
          if not self._exists(candidate):  # rotated away meanwhile: not damage
            _listing(self._manager.reload)
            break
          failures.append((candidate, reason))
          self._warn_fallback(candidate, reason, listed)
        else:
          break
    if not failures and step is not None:
      raise FileNotFoundError(f"checkpoint step {step} is not in {self.directory}")
    raise CheckpointError(
        f"no readable checkpoint in {self.directory}: "
        + "; ".join(f"step {s}: {r}" for s, r in failures))

  def _try_restore(self, candidate: int, target: Any) -> Tuple[Any, Optional[str]]:
    """`(state, None)`, or `(None, why the step cannot be used)`; `target` None: host arrays."""
    try:
      stored = self._stored_tree(candidate)
    except Exception as err:  # pylint: disable=broad-except
      return None, f"its metadata is unreadable: {_short(err)}"
    if target is None:
      load = lambda: restore_on_host(epath.Path(self.directory) / str(candidate) / DEFAULT_ITEM)
    else:
      self._refuse_mismatch(stored, target, candidate)
      load = lambda: self._manager.restore(candidate, args=ocp.args.Composite(
          **{DEFAULT_ITEM: ocp.args.StandardRestore(abstract_like(target))}))[DEFAULT_ITEM]
    try:
      checksums = self._stored_checksums(candidate)
    except (OSError, ValueError) as err:
      return None, f"its checksums are missing or damaged: {_short(err)}"
    try:
      restored = load()
    except Exception as err:  # pylint: disable=broad-except
      return None, f"its array data is unreadable: {_short(err)}"
    return restored, self._verify(candidate, checksums, restored)

  def _refuse_mismatch(self, stored: Any, target: Any, step: int) -> None:
    """Raises CheckpointMismatchError when `target` does not fit the stored tree of `step`."""
    params = stored["params"] if isinstance(stored, dict) and "params" in stored else stored
    mismatch = _shape_mismatches(params, getattr(target, "params", target))
    if mismatch:
      shown = mismatch[:MAX_MISMATCH_LINES]
      more = len(mismatch) - len(shown)
      raise CheckpointMismatchError(
          f"the model this config builds does not fit checkpoint step {step} in "
          f"{self.directory}:\n  " + "\n  ".join(shown)
          + (f"\n  ... and {more} more" if more else ""))
    _refuse_other_layout(stored, target, step, self.directory)

  def _warn_fallback(self, step: int, reason: str, steps: List[int]) -> None:
    older = [s for s in steps if s < step]
    then = f"falling back to step {older[0]}" if older else "no older step left"
    self.damaged_steps.append(step)
    if jax.process_index() == 0:
      print(f"warning: checkpoint step {step} in {self.directory} cannot be used ({reason}); "
            f"{then}", file=sys.stderr, flush=True)

  def set_aside(self, steps: List[int], folder: str) -> List[str]:
    """Moves whole steps of this run to `<workdir>/<folder>/<step>` (kept, never deleted).

    Returns:
      The new paths.
    """
    self.wait()
    moved = []
    if jax.process_index() == 0:
      aside = epath.Path(self.directory).parent / folder
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = aside / str(step)
        if target.exists():
          target = aside / f"{step}.{len(list(aside.iterdir()))}"
        (epath.Path(self.directory) / str(step)).rename(target)
        moved.append(str(target))
    self._manager.reload()
    return moved

  def set_aside_damaged(self) -> None:
    """Moves the steps a restore skipped to `<workdir>/checkpoints_damaged/`, kept for study.

    Training calls this after falling back, so that it can save those steps anew.
    """
    if not self.damaged_steps:
      return
    for step, path in zip(self.damaged_steps, self.set_aside(self.damaged_steps,
                                                             "checkpoints_damaged")):
      logging.warning("moved damaged checkpoint step %d to %s", step, path)
    self.damaged_steps = []

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    with self._disk_full_named():
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self.wait()
    self._manager.close()


def _listing(function: Callable[[], Any]) -> Any:
  """Runs an Orbax call that lists the steps, again when a step vanishes under it.

  Orbax stats every step while it lists them; a trainer's keep-N rotation may
  remove one in between, which is not an error of the reader.
  """
  for _ in range(MAX_RELISTS - 1):
    try:
      return function()
    except FileNotFoundError:
      time.sleep(_ROTATION_GRACE_S)
  return function()


def _is_disk_full(err: BaseException) -> bool:
  """An OSError ENOSPC, or TensorStore's ValueError for it (RESOURCE_EXHAUSTED, os error 28)."""
  if isinstance(err, OSError):
    return err.errno == errno.ENOSPC
  text = str(err)
  return "RESOURCE_EXHAUSTED" in text and ("os_error_code='28'" in text
                                           or "No space left on device" in text)


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
