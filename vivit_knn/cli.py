"""Runs the command-line tools: every error is one short message with a documented exit code.

Exit codes (the same for every CLI of the project):

  0  done
  1  an unexpected error (a bug: rerun with --verbose and report the traceback)
  2  bad input: config file, config key or value, flags, files, folders, checkpoints
  3  training stopped on a non-finite loss or state (the last good checkpoint is kept)
  4  stopped by SIGTERM, SIGUSR1 or Ctrl-C: a checkpoint was saved (rerun to resume), or
     the signal came during start-up, with nothing to save yet
  130  interrupted by a second Ctrl-C, without saving

`--verbose` (or the environment variable VIVIT_KNN_VERBOSE=1) prints the traceback
as well, and keeps the libraries' start-up and INFO lines that are hidden by
default (see `quiet_startup`).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import sys
import threading
import traceback
from typing import Callable, List, Optional, Sequence

from absl import app, flags
from absl import logging as absl_logging

from vivit_knn import errors, stop_signals

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_NON_FINITE, EXIT_PREEMPTED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
VERBOSE_ENV = "VIVIT_KNN_VERBOSE"

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Print tracebacks with errors, and the libraries' start-up and INFO "
    f"lines (also: {VERBOSE_ENV}=1).")


def verbose(argv: Optional[Sequence[str]] = None) -> bool:
  """Whether tracebacks were asked for (before or after flag parsing)."""
  if os.environ.get(VERBOSE_ENV, "") not in ("", "0") or any(
      a in ("--verbose", "--verbose=true", "--verbose=True") for a in argv or ()):
    return True
  return bool(flags.FLAGS.is_parsed() and _VERBOSE.present and _VERBOSE.value)


def _chain(err: BaseException) -> List[BaseException]:
  seen = []
  while err is not None and err not in seen:
    seen.append(err)
    err = err.__cause__ or err.__context__
  return seen


def _config_file(argv: Sequence[str]) -> str:
  return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "--config")


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


def _unknown_key(name: str, argv: Sequence[str]) -> str:
  """'unknown config key a.b.c' with the override's whole path, and which datasets read it."""
  from vivit_knn.data.registry import DATASET_DEFAULTS

  name = name.strip("'\"")
  paths = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  path = next((p for p in paths if name in p.split(".")), name)
  owners = [d for d, defaults in DATASET_DEFAULTS.items() if name in defaults()]
  if path.startswith("dataset.") and owners:
    return (f"config key {path!r} is not in this config's dataset: only dataset.name "
            f"{', '.join(map(repr, owners))} read it")
  return f"unknown config key {path!r}"


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
      return _unknown_key(str(e.args[0]) if e.args else "", argv)
  if isinstance(err, flags.Error):
    return _first_line(err)
  root = chain[-1]
  return f"--config: loading {config} failed: {type(root).__name__}: {_first_line(root)}"


_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


class _NoneConfigs(logging.Filter):
  """Notes config files whose `get_config()` returned None, hiding ml_collections' warning."""

  def __init__(self):
    super().__init__()
    self.files: List[str] = []

  def filter(self, record: logging.LogRecord) -> bool:
    """False (hidden) for the 'get_config() returned None' warning, else True."""
    if "get_config() returned None" in str(record.msg):
      self.files.append(str(record.args[0]) if record.args else "")
      return False
    return True


def _none_config_error(argv: Sequence[str], files: Sequence[str]) -> Optional[str]:
  """The error for a config flag whose file's `get_config()` returned None (`files`), if any."""
  found = [(a[2:].split("=", 1)[0], files[0]) for a in argv
           if files and a.startswith("--") and a.endswith("=" + files[0])]
  if files and not found:
    found = [("config", files[0])]
  for name in flags.FLAGS if not found else ():
    flag = flags.FLAGS[name]
    try:
      path = getattr(flag, "config_filename", None)  # config file flags only
      if path is not None and flag.present and flag.value is None:
        found.append((name, path))
    except flags.Error:  # a config file that failed to load: reported by the caller
      continue
  for name, path in found[:1]:
    return (f"--{name}: {path.split(':')[0]}'s get_config() returned None; it must return a "
            "ml_collections.ConfigDict")
  return None


def _parse_flags(argv: List[str], pass_unknown_flags: bool = False) -> List[str]:
  none_configs = _NoneConfigs()
  absl_logging.get_absl_logger().addFilter(none_configs)
  try:
    try:
      rest = flags.FLAGS(argv, known_only=pass_unknown_flags)
    except SystemExit as err:
      # absl prints the help and exits with 1; asking for help is not a failure.
      if err.code == 1 and any(a in _HELP_FLAGS for a in argv[1:]):
        sys.exit(EXIT_OK)
      raise
    config = _config_file(argv)
    if config != "--config" and not any(os.path.isfile(p) for p in (config, config.split(":")[0])):
      raise FileNotFoundError(f"No such file: {config}")
    message = _none_config_error(argv, none_configs.files)
    if message:
      raise flags.Error(message)
    if len(rest) > 1 and not pass_unknown_flags:
      strays = " ".join(repr(a) for a in rest[1:])
      raise flags.Error(f"unexpected argument{'s' if len(rest) > 2 else ''} {strays}: every "
                        "option is a --name=value flag (see --help)")
    return rest
  except Exception as err:  # pylint: disable=broad-except  # config files can raise anything
    if verbose(argv):
      traceback.print_exc()
    message = _none_config_error(argv, none_configs.files) or describe_flags_error(err, argv)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  finally:
    absl_logging.get_absl_logger().removeFilter(none_configs)


def _drop_checkpoint_thread_tracebacks(record) -> bool:
  """False for the tracebacks Orbax's threads log when a save or read fails.

  The same error reaches the command in its main thread, which reports it in one line.
  """
  if not record.exc_info:
    return True
  orbax = f"{os.sep}orbax{os.sep}"
  files = [frame.filename for frame in traceback.extract_tb(record.exc_info[2])]
  return not any(orbax in path for path in files + [record.pathname or ""])


class _PlainLine(logging.Formatter):
  """`warning: <first line of the message>`: a library's log record as one plain line."""

  def format(self, record: logging.LogRecord) -> str:
    """The record's level and the first line of its message (no prefix, no traceback)."""
    text = record.getMessage().strip()
    return f"{record.levelname.lower()}: {text.splitlines()[0] if text else record.name}"


def quiet_startup(argv: Optional[Sequence[str]] = None) -> None:
  """Hides the libraries' start-up and INFO lines unless `--verbose` is in `argv` (or the env).

  Their warnings become one plain line each (`_PlainLine`).

  `TF_CPP_MIN_LOG_LEVEL=2` (set when unset or empty, before TensorFlow is imported)
  keeps back TensorFlow's C++ INFO notes; absl's verbosity WARNING hides the
  Python-side INFO lines (JAX's backend probing, Orbax's progress).
  """
  if verbose(sys.argv if argv is None else argv):
    return
  if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
  absl_logging.set_verbosity(absl_logging.WARNING)
  handler = absl_logging.get_absl_handler()
  handler.addFilter(_drop_checkpoint_thread_tracebacks)
  handler.setFormatter(_PlainLine())
  logging.captureWarnings(True)  # Python warnings of the libraries: through the same handler
  # Orbax runs its reads and writes as asyncio tasks; a failed one is also logged by
  # asyncio itself ("Task exception was never retrieved"), at exit, past any handler.
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def describe_error(err: BaseException) -> tuple:
  """`(exit code, one-line message)` for the error `err` that ended a tool (see the module doc)."""
  if isinstance(err, errors.UserError):
    return EXIT_BAD_INPUT, str(err)
  if isinstance(err, FloatingPointError):
    return EXIT_NON_FINITE, str(err)
  if isinstance(err, OSError) and err.errno == errno.ENOSPC:
    return EXIT_BAD_INPUT, f"no space left on the device writing {err.filename or 'a file'}"
  if isinstance(err, PermissionError):
    return EXIT_BAD_INPUT, f"permission denied: {err.filename or err} (is the folder writable?)"
  if isinstance(err, (NotADirectoryError, FileExistsError)) and err.filename is not None:
    return EXIT_BAD_INPUT, (f"{err.strerror or err}: {err.filename} (a file stands where a "
                            "folder is needed)")
  if isinstance(err, (ValueError, app.UsageError, ImportError, OSError)):
    return EXIT_BAD_INPUT, str(err)  # ours (e.g. FileExistsError) carry the whole message
  first = str(err).splitlines()[0] if str(err) else ""
  return EXIT_UNEXPECTED, (f"unexpected {type(err).__name__}: {first}"
                           " (rerun with --verbose for the traceback)")


def _list_flags_in_help(main: Callable) -> None:
  """Makes `--help` (absl: the flags of module `sys.argv[0]`) list the tool's flags, `--verbose`."""
  module = getattr(main, "__module__", "__main__")
  own = [] if module == "__main__" else flags.FLAGS.get_key_flags_for_module(module)
  for flag in own + [flags.FLAGS[_VERBOSE.name]]:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run(main: Callable[[List[str]], int], pass_unknown_flags: bool = False) -> None:
  """`absl.app.run(main)` with one-line errors and the exit codes of the module doc.

  With `pass_unknown_flags`, arguments the tool does not define reach `main`, which checks them.
  """

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
  quiet_startup()
  _list_flags_in_help(main)
  try:
    app.run(guarded, flags_parser=functools.partial(
        _parse_flags, pass_unknown_flags=pass_unknown_flags))
  except stop_signals.StopRequested as stop:  # raised by a handler `vivit_knn.main` arms
    print(stop, file=sys.stderr, flush=True)
    sys.stdout.flush()
    # The handler may have interrupted a C extension's import half-way; interpreter
    # finalisation can then abort. Nothing is left to save (`finally` blocks have run).
    os._exit(EXIT_PREEMPTED)
