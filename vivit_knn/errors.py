"""Errors that the command lines report as bad input or a stop (see `vivit_knn.cli`).

The bottom of the layers: imports nothing of the project, so that the command
line can name these classes without loading the libraries that raise them.
"""


class UserError(Exception):
  """Something the user can fix (input, files, folders, space): exit 2, message as is."""


class WorkdirBusyError(UserError):
  """Another live process trains in the same workdir."""


class DiskFullError(UserError):
  """A write failed for lack of space; the message says what is kept."""


class CheckpointError(UserError):
  """No checkpoint in a run's folder could be read and verified (or strict checking refused)."""


class CheckpointReadError(UserError):
  """Storage kept failing while a checkpoint was read; the checkpoint itself may be intact."""
