"""One trainer per workdir: an exclusive `fcntl.flock` on `<workdir>/train.lock`.

The kernel releases the lock when its process ends in any way (`kill -9` included). The file's
text names the holder (host, pid, start) for a second trainer's message; a text left by a run
that did not end cleanly is reported when a new run takes over. The file is never removed
(a third process could then lock a new file of the same name). Remote workdirs (`gs://...`)
cannot be locked: a warning says so. In a multi-process run, process 0 locks for all.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from typing import Optional

from vivit_knn.errors import WorkdirBusyError

LOCK_FILE = "train.lock"


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
          f"{holder.get('started', '?')}")


class WorkdirLock:
  """The exclusive training lock of one workdir."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._fd: Optional[int] = None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock and returns self; WorkdirBusyError names another live holder."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read(fd)
      os.close(fd)
      raise WorkdirBusyError(
          f"--workdir={self.workdir} is being trained by another process ({_describe(holder)}; "
          f"lock {self.path}): wait for it to finish, or train in another --workdir") from None
    self._fd = fd
    left = _read(fd)
    if left:
      print(f"note: took over the training lock of a run that did not end cleanly "
            f"({_describe(left)})", file=sys.stderr, flush=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)
    return self

  def release(self) -> None:
    """Clears the holder's text and releases the lock (safe to call twice)."""
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None


def _read(fd: int) -> dict:
  """The holder recorded in the lock file ({} when empty or unreadable as JSON)."""
  text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
  if not text:
    return {}
  try:
    holder = json.loads(text)
  except ValueError:
    return {"host": "?", "pid": "?", "started": f"unreadable lock text {text[:40]!r}"}
  return holder if isinstance(holder, dict) else {}


def lock_workdir(workdir: str) -> Optional[WorkdirLock]:
  """The acquired lock of a local `workdir`; None (with a warning) for a remote one."""
  if "://" in str(workdir):
    print(f"warning: {workdir} is remote storage, where this run cannot lock the workdir "
          "against a second trainer", file=sys.stderr, flush=True)
    return None
  return WorkdirLock(workdir).acquire()
