"""Runs the command-line tools: every error is one short message with a documented exit code.

Exit codes (the same for every CLI of the project):

  0  done
  1  an unexpected error (a bug: rerun with --verbose and report the traceback)
  2  bad input: config file, config key or value, flags, files, folders, checkpoints
  3  training stopped on a non-finite loss or state (the last good checkpoint is kept)
  4  preempted (SIGTERM, SIGUSR1 or Ctrl-C): a checkpoint was saved; rerun to resume
  130  interrupted by a second Ctrl-C, without saving

`--verbose` (or the environment variable VIVIT_KNN_VERBOSE=1) prints the traceback
as well.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import threading
import traceback
from typing import Callable, List, Optional, Sequence

from absl import app, flags

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_NON_FINITE, EXIT_PREEMPTED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
VERBOSE_ENV = "VIVIT_KNN_VERBOSE"

_VERBOSE = flags.DEFINE_bool("verbose", False,
                             f"Print tracebacks with errors (also: {VERBOSE_ENV}=1).")


def verbose(argv: Optional[Sequence[str]] = None) -> bool:
  """Whether tracebacks were asked for (before or after flag parsing)."""
  if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
    return True
  if argv is not None and any(a in ("--verbose", "--verbose=true", "--verbose=True")
                              for a in argv):
    return True
  return bool(_VERBOSE.present and _VERBOSE.value) if flags.FLAGS.is_parsed() else False


def _chain(err: BaseException) -> List[BaseException]:
  seen = []
  while err is not None and err not in seen:
    seen.append(err)
    err = err.__cause__ or err.__context__
  return seen


def _config_file(argv: Sequence[str]) -> str:
  for a in argv:
    if a.startswith("--config="):
      return a.split("=", 1)[1]
  return "--config"


def _override_suggestion(message: str, argv: Sequence[str]) -> Optional[str]:
  """'unknown config key a.b (did you mean a.c?)' from ml_collections' KeyError text."""
  m = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', message)
  if not m:
    return None
  right, wrong = m.group(1), m.group(2)
  for a in argv:
    key = a[len("--config."):].split("=", 1)[0] if a.startswith("--config.") else ""
    if wrong in key.split("."):
      fixed = ".".join(right if part == wrong else part for part in key.split("."))
      return f"unknown config key {key!r} (did you mean {fixed!r}?)"
  return f"unknown config key {wrong!r} (did you mean {right!r}?)"


def _first_line(err: BaseException) -> str:
  text = str(err).strip()
  return text.splitlines()[0] if text else type(err).__name__


def describe_flags_error(err: BaseException, argv: Sequence[str]) -> str:
  """One line saying what is wrong with the command line or the config file."""
  chain = _chain(err)
  config = _config_file(argv)
  for e in chain:
    if isinstance(e, SyntaxError):
      where = f"{e.filename}, line {e.lineno}" if e.filename else config
      return f"--config: syntax error in {where}: {e.msg}"
  for e in chain:
    hint = _override_suggestion(str(e), argv)
    if hint:
      return hint
  if any("No such file" in str(e) for e in chain):
    return f"--config: cannot read config file {config}: no such file"
  for e in chain:
    if isinstance(e, KeyError) and any(a.startswith("--config.") for a in argv):
      return f"unknown config key {_first_line(e)}"
  if isinstance(err, flags.Error):
    return _first_line(err)
  root = chain[-1]
  return f"--config: loading {config} failed: {type(root).__name__}: {_first_line(root)}"


def _parse_flags(argv: List[str]) -> List[str]:
  try:
    rest = flags.FLAGS(argv)
    config = _config_file(argv)
    if config != "--config" and not any(os.path.isfile(p) for p in (config, config.split(":")[0])):
      raise FileNotFoundError(f"No such file: {config}")
    return rest
  except Exception as err:  # pylint: disable=broad-except  # config files can raise anything
    if verbose(argv):
      traceback.print_exc()
    print(f"error: {describe_flags_error(err, argv)}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def quiet_tensorflow_import() -> None:
  """Imports TensorFlow with the C++ start-up lines (oneDNN, CPU features) hidden.

  They are written straight to file descriptor 2 while TensorFlow loads, before
  any Python logging setting applies. Nothing is hidden with --verbose.
  """
  if verbose(sys.argv) or "tensorflow" in sys.modules:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as null:
      os.dup2(null.fileno(), 2)
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def describe_error(err: BaseException) -> tuple:
  """`(exit code, message)` for an error raised while a tool runs.

  Args:
    err: the exception that ended the tool.

  Returns:
    `(exit code, one-line message)`, with the codes of the module doc.
  """
  # Imported here, not at the top: it loads jax and orbax (seconds), which the flag
  # parsing and `--help` of every tool would otherwise wait for.
  from vivit_knn.train.checkpoint import CheckpointError
  if isinstance(err, FloatingPointError):
    return EXIT_NON_FINITE, str(err)
  if isinstance(err, OSError) and err.errno == errno.ENOSPC:
    return EXIT_BAD_INPUT, f"no space left on the device writing {err.filename or 'a file'}"
  if isinstance(err, PermissionError):
    return EXIT_BAD_INPUT, f"permission denied: {err.filename or err} (is the folder writable?)"
  if isinstance(err, (NotADirectoryError, FileExistsError)) and err.filename is None:
    return EXIT_BAD_INPUT, str(err)  # raised by our code, with the whole message
  if isinstance(err, (NotADirectoryError, FileExistsError)):
    return EXIT_BAD_INPUT, f"{err.strerror or err}: {err.filename} (a file stands where a " \
                           "folder is needed)"
  if isinstance(err, (ValueError, FileNotFoundError, CheckpointError, app.UsageError,
                      ImportError, OSError)):
    return EXIT_BAD_INPUT, str(err)
  first = str(err).splitlines()[0] if str(err) else ""
  return EXIT_UNEXPECTED, (f"unexpected {type(err).__name__}: {first}"
                           " (rerun with --verbose for the traceback)")


def run(main: Callable[[List[str]], int]) -> None:
  """`absl.app.run(main)` with one-line errors and the exit codes of the module doc."""

  def guarded(argv):
    try:
      return main(argv)
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      return EXIT_INTERRUPTED
    except Exception as err:  # pylint: disable=broad-except  # the CLI's last line of defence
      if verbose():
        traceback.print_exc()
      code, message = describe_error(err)
      print(f"error: {message}", file=sys.stderr)
      return code

  if not verbose(sys.argv):
    # Orbax's reader threads print tracebacks of their own when a damaged checkpoint is
    # tried; the restore reports the outcome in one line.
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda unraisable: None  # their pending reads, at exit
  if any(a.startswith("--config") for a in sys.argv[1:]):
    quiet_tensorflow_import()  # config files import the data pipeline, hence TensorFlow
  app.run(guarded, flags_parser=_parse_flags)
