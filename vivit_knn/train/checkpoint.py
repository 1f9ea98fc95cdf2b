"""Orbax checkpoints of the train state: periodic saves, keep-N, verified restore with fallback.

One restore path (`Checkpointer.restore`) serves training, eval, inference, the tools and
distillation teachers.

Orbax records no checksum of array values, so each save also stores, as the item `checksums`
of the same save, two wrapping 32-bit sums per array of its raw bits (plain and weighted by
position), computed on device. A step is complete only with its checksums. A restore
recomputes them; a damaged step (a checksum mismatch, array data that does not decode,
metadata that does not parse) is skipped with a one-line warning for the next older one. A
storage error is retried, then stops the command with nothing moved (`CheckpointReadError`).
A step without checksums (an older version) restores with a warning, or is refused with
`strict`. Parameter shapes that differ from the config's are refused as a mismatch, not
damage; a step removed while it is read (keep-N rotation of a trainer in the same folder)
makes the steps be listed again.
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

from vivit_knn.errors import CheckpointError, CheckpointReadError, DiskFullError
from vivit_knn.weights.tree import key_name

DEFAULT_ITEM, CHECKSUMS_ITEM = "default", "checksums"
BEST_FOLDER = "checkpoints_best"  # the best eval's state, with train.eval_every_steps
LEGACY_CHECKSUMS = "checksums.json"  # beside the step, written by earlier versions
STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's step metadata: it lists the step's items
# How often the steps are listed again when the one being read disappears, and how long a
# removal under way is given to end before a step that went missing parts is judged.
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


def write_file(workdir: str, name: str, text: str) -> str:
  """Writes `<workdir>/<name>` atomically (through a temporary file); returns its path."""
  path = resolve(workdir) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
  tmp.write_text(text)
  tmp.replace(path)
  return str(path)


def item_path(workdir: str, step: int) -> epath.Path:
  """Directory of the train state saved at `step` under `workdir`."""
  return resolve(workdir) / "checkpoints" / str(step) / DEFAULT_ITEM


def restore_on_host(path: epath.Path) -> Any:
  """Restores a saved pytree as host numpy arrays, whatever mesh or devices wrote it."""
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
  elif x.dtype.itemsize == 8:  # two 32-bit words per element
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  else:
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
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


def _shapes(tree: Any) -> Dict[str, tuple]:
  return {key_name(kp): tuple(getattr(v, "shape", ()))
          for kp, v in jax.tree_util.tree_leaves_with_path(tree)}


def _shape_mismatches(stored: Any, target: Any) -> List[str]:
  """Lines `params/<path>: stored (..), requested (..)` where the two trees' params differ."""
  have, want = _shapes(stored), _shapes(target)
  return [f"params/{p}: stored {have.get(p, 'absent')}, requested {want.get(p, 'absent')}"
          for p in sorted(set(have) | set(want)) if have.get(p) != want.get(p)]


def has_checkpoints(workdir: str) -> bool:
  """Whether `<workdir>/checkpoints` holds a finished (renamed to its step) checkpoint.

  Looks at names only: opening a CheckpointManager would synchronise all processes.
  """
  directory = resolve(workdir) / "checkpoints"
  if not directory.is_dir():
    return False
  return any(p.name.isdigit() and p.is_dir() for p in directory.iterdir())


class Checkpointer:
  """Saves the train state under `<workdir>/checkpoints/<step>` and restores the latest one.

  Saves are asynchronous (`wait()`, `close()` block until they are on disk). `read_only`
  never creates, cleans or deletes anything; `strict` refuses steps without checksums.
  """

  def __init__(self, workdir: str, *, keep: int = 3, save_every: int = 1,
               read_only: bool = False, strict: bool = False, folder: str = "checkpoints",
               best_metric: Optional[str] = None):
    self.directory = str(resolve(workdir) / folder)
    self._path = epath.Path(self.directory)
    self.save_every = save_every
    self.strict = strict
    # The interval is applied in `save` (Orbax's policy would also save the first step). Only
    # the writer clears interrupted saves; Orbax's own read_only mode warns twice per use.
    # With `best_metric`, Orbax keeps the `keep` steps of the best metrics (saved with `save`'s
    # `metrics`), not the newest: a loss is minimised, accuracies maximised.
    best = {} if best_metric is None else dict(
        best_fn=lambda m: m[best_metric],
        best_mode="min" if best_metric.endswith("loss") else "max")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        cleanup_tmp_directories=not read_only, **best)
    handlers = {DEFAULT_ITEM: ocp.StandardCheckpointHandler(),
                CHECKSUMS_ITEM: ocp.JsonCheckpointHandler()}
    self._manager = _listing(lambda: ocp.CheckpointManager(self.directory, options=options,
                                                           item_handlers=handlers))
    self.restored_step: Optional[int] = None
    self.damaged_steps: List[int] = []

  def latest_step(self) -> Optional[int]:
    """The newest finished checkpoint's step, or None."""
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The kept step with the best `best_metric` (the newest without one)."""
    return self._manager.best_step()

  def all_steps(self) -> list:
    """Steps of every kept checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False,
           metrics: Optional[Dict[str, float]] = None) -> bool:
    """Starts saving `state` and its checksums at a multiple of `save_every` (or `force`).

    Returns:
      Whether a save was started.
    """
    if (not force and step % self.save_every) or step == self.latest_step():
      return False
    args = ocp.args.Composite(**{DEFAULT_ITEM: ocp.args.StandardSave(state),
                                 CHECKSUMS_ITEM: ocp.args.JsonSave(fingerprints(state))})
    with self._disk_full_named():
      return self._manager.save(step, args=args, force=True, metrics=metrics)

  @contextlib.contextmanager
  def _disk_full_named(self):
    """Turns a full disk, met by an asynchronous save, into one error saying what is kept."""
    try:
      yield
    except (OSError, ValueError) as err:
      if not _is_disk_full(err):
        raise
      # Orbax lists a step from the start of its save: the failed one has no folder yet.
      complete = [s for s in self._manager.all_steps() if (self._path / str(s)).exists()]
      kept = (f"the newest complete checkpoint, step {max(complete)}, is intact" if complete
              else "no checkpoint was completed")
      raise DiskFullError(f"no space left on the device for the checkpoints in {self.directory} "
                          f"({kept}): free space and rerun to resume") from None

  def _stored_tree(self, step: int) -> Any:
    return ocp.PyTreeCheckpointHandler().metadata(self._path / str(step) / DEFAULT_ITEM).tree

  def _stored_checksums(self, step: int) -> Optional[Dict[str, Any]]:
    """The step's checksums, None for an older version's step; OSError/ValueError if damaged."""
    step_dir = self._path / str(step)
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
    path = self._path / str(step)
    if not path.exists():
      return False
    time.sleep(_ROTATION_GRACE_S)
    return path.exists()

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores into the structure, dtypes and shardings of `target` (None: host arrays).

    With `step` None the newest readable, verified step (see the module doc). Raises
    CheckpointMismatchError when the parameters do not fit and CheckpointError when no
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
    """`(state, None)`, or `(None, the damage that makes the step unusable)`.

    Only recognised damage is returned (`_damage`); a storage error is retried
    (`_read_with_retries`) and then raised, like any other error: nothing that may be intact
    is given up. `target` None restores host arrays.
    """
    step_dir = self._path / str(candidate)
    try:
      stored = _read_with_retries(lambda: self._stored_tree(candidate), step_dir)
    except _METADATA_DAMAGE as err:
      return None, f"its metadata does not parse: {_short(err)}"
    if target is None:
      load = lambda: restore_on_host(step_dir / DEFAULT_ITEM)
    else:
      self._refuse_mismatch(stored, target, candidate)
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=getattr(x, "sharding", None)), target)
      load = lambda: self._manager.restore(candidate, args=ocp.args.Composite(
          **{DEFAULT_ITEM: ocp.args.StandardRestore(abstract)}))[DEFAULT_ITEM]
    try:
      checksums = _read_with_retries(lambda: self._stored_checksums(candidate), step_dir)
    except _METADATA_DAMAGE as err:
      return None, f"its checksums are missing or damaged: {_short(err)}"
    try:
      restored = _read_with_retries(load, step_dir)
    except Exception as err:  # pylint: disable=broad-except  # Orbax wraps TensorStore's errors
      reason = _damage(err)
      if reason is None and step_dir.exists():
        raise
      # A step rotated away mid-read (Orbax: "directory does not exist") is passed over too.
      return None, f"its array data is unreadable: {reason or _short(err)}"
    return restored, self._verify(candidate, checksums, restored)

  def _refuse_mismatch(self, stored: Any, target: Any, step: int) -> None:
    """Raises CheckpointMismatchError when `target` does not fit the stored tree of `step`.

    Differing parameter shapes are listed; a train state whose other arrays sit under other
    paths (another optimizer layout) is refused too: neither is damage.
    """
    where = f"checkpoint step {step} in {self.directory}"
    has_params = isinstance(stored, dict) and "params" in stored
    mismatch = _shape_mismatches(stored["params"] if has_params else stored,
                                 getattr(target, "params", target))
    if mismatch:
      more = len(mismatch) - MAX_MISMATCH_LINES
      raise CheckpointMismatchError(
          f"the model this config builds does not fit {where}:\n  "
          + "\n  ".join(mismatch[:MAX_MISMATCH_LINES])
          + (f"\n  ... and {more} more" if more > 0 else ""))
    have, want = set(_shapes(stored)), set(_shapes(target))
    if has_params and have != want:
      extra, missing = sorted(have - want), sorted(want - have)
      raise CheckpointMismatchError(
          f"the train state this config builds does not fit {where}: {len(extra)} stored arrays "
          f"are not in it (first: {extra[0] if extra else '-'}) and {len(missing)} of its "
          f"arrays are not stored (first: {missing[0] if missing else '-'}); the checkpoint was "
          "written with other optimizer settings or by an older version")

  def _warn_fallback(self, step: int, reason: str, steps: List[int]) -> None:
    older = [s for s in steps if s < step]
    then = f"falling back to step {older[0]}" if older else "no older step left"
    self.damaged_steps.append(step)
    if jax.process_index() == 0:
      print(f"warning: checkpoint step {step} in {self.directory} cannot be used ({reason}); "
            f"{then}", file=sys.stderr, flush=True)

  def set_aside(self, steps: List[int], folder: str) -> List[str]:
    """Moves whole steps to `<workdir>/<folder>/<step>` (never deleted); returns the new paths."""
    self.wait()
    moved = []
    if jax.process_index() == 0:
      aside = self._path.parent / folder
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = aside / str(step)
        if target.exists():
          target = aside / f"{step}.{len(list(aside.iterdir()))}"
        (self._path / str(step)).rename(target)
        moved.append(str(target))
    self._manager.reload()
    return moved

  def set_aside_damaged(self) -> None:
    """Moves the steps a restore skipped to `<workdir>/checkpoints_damaged/` (kept for study)."""
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


# What a step's unparsable metadata raises: its files missing, not JSON, or not the layout.
_METADATA_DAMAGE = (FileNotFoundError, ValueError, KeyError)
# TensorStore reports errors as `ValueError("<STATUS>: ...")`. These statuses mean the stored
# bytes are bad (a short file, data that does not decode, a missing chunk); the others
# (UNAVAILABLE, DEADLINE_EXCEEDED, PERMISSION_DENIED, ...) are the storage's, not the step's.
_DAMAGE_STATUSES = frozenset({"OUT_OF_RANGE", "FAILED_PRECONDITION", "DATA_LOSS", "NOT_FOUND",
                              "INVALID_ARGUMENT"})
_TRANSIENT_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "UNKNOWN",
                                 "INTERNAL", "RESOURCE_EXHAUSTED"})
READ_TRIES = 3
_RETRY_WAIT_S = 1.0  # doubled after each failed try


def _causes(err: BaseException):
  """`err` and the errors it was raised from, outermost first."""
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    yield err
    err = err.__cause__ or err.__context__


def _status(err: BaseException) -> str:
  return str(err).split(":", 1)[0].strip() if isinstance(err, ValueError) else ""


def _damage(err: BaseException) -> Optional[str]:
  """Why the step's stored data is bad, when `err` (or its cause) says so; else None."""
  for cause in _causes(err):
    if isinstance(cause, FileNotFoundError) or _status(cause) in _DAMAGE_STATUSES:
      return _short(cause)
  return None


def _transient(err: BaseException) -> bool:
  """Whether `err` is a storage error a later try may not meet (an OSError, not ENOENT)."""
  for cause in _causes(err):
    if isinstance(cause, FileNotFoundError) or _status(cause) in _DAMAGE_STATUSES:
      return False
    if isinstance(cause, OSError) or _status(cause) in _TRANSIENT_STATUSES:
      return True
  return False


def _read_with_retries(read: Callable[[], Any], step_dir: epath.Path) -> Any:
  """`read()`, tried again after a transient storage error (`_transient`), `READ_TRIES` times.

  Raises CheckpointReadError when every try failed: the step may well be intact, so it is
  neither set aside nor passed over for an older one.
  """
  wait = _RETRY_WAIT_S
  for attempt in range(1, READ_TRIES + 1):
    try:
      return read()
    except Exception as err:  # pylint: disable=broad-except  # re-raised unless transient
      if not _transient(err):
        raise
      if attempt == READ_TRIES:
        raise CheckpointReadError(
            f"checkpoint step {step_dir.name} in {step_dir.parent} could not be read after "
            f"{READ_TRIES} tries ({_short(err)}): the storage failed, not the checkpoint, so "
            "nothing was moved and no older step was used; rerun when the storage is "
            "healthy") from err
      logging.warning("reading %s failed (%s); trying again in %.0f s", step_dir,
                      _short(err), wait)
      time.sleep(wait)
      wait *= 2
  return None  # not reached: the last try returns or raises


def _listing(function: Callable[[], Any]) -> Any:
  """Runs an Orbax call that lists the steps, again when a step (rotated away) vanishes.

  Orbax reports a step removed mid-listing as a missing file or, when its folder went
  between two checks, as NotADirectoryError.
  """
  for _ in range(MAX_RELISTS - 1):
    try:
      return function()
    except (FileNotFoundError, NotADirectoryError):
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
  """Silences Orbax's pages of error logs while damaged steps are tried (warnings say why)."""
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
