"""The main command line, counting the host-side collectives of each training step.

    python -m tests.host_syncs <counts.json> --config=... --workdir=... [multi-process flags]

Counts, on the training (main) thread, the calls that make one process wait for the others
outside the jitted step: JAX's multihost utilities and Orbax's (barriers, broadcasts,
agreement on the preemption step). A call made inside another
counted one is not counted again. Each call is attributed to the step most recently
dispatched (0: before the first). Calls from other threads (Orbax finishing an asynchronous
save) are counted apart. On exit each process writes
`{"by_step": {step: n}, "other_threads": n, "names": {name: n}}` to `<counts.json>.<process>`.
"""

import atexit
import collections
import json
import sys
import threading

_MAIN = threading.main_thread()
_state = threading.local()
by_step = collections.Counter()
names = collections.Counter()
other_threads = [0]
current_step = [0]


def _counted(fn, name):
  def wrapper(*args, **kwargs):
    depth = getattr(_state, "depth", 0)
    if depth == 0:
      if threading.current_thread() is _MAIN:
        by_step[current_step[0]] += 1
        names[name] += 1
      else:
        other_threads[0] += 1
    _state.depth = depth + 1
    try:
      return fn(*args, **kwargs)
    finally:
      _state.depth = depth
  return wrapper


def install(path):
  import jax
  from jax.experimental import multihost_utils
  from orbax.checkpoint._src.multihost import multihost

  from vivit_knn.train import steps

  for name in ("process_allgather", "broadcast_one_to_all", "sync_global_devices",
               "assert_equal", "reached_preemption_sync_point"):
    setattr(multihost_utils, name, _counted(getattr(multihost_utils, name), name))
  for name in ("sync_global_processes", "broadcast_one_to_all", "reached_preemption",
               "global_max"):
    setattr(multihost, name, _counted(getattr(multihost, name), f"orbax.{name}"))
  make_train_step = steps.make_train_step

  def make_counted_step(*args, **kwargs):
    step = make_train_step(*args, **kwargs)

    def counted_step(state, *rest):
      current_step[0] += 1
      return step(state, *rest)
    return counted_step

  steps.make_train_step = make_counted_step

  def write():
    with open(f"{path}.{jax.process_index()}", "w") as f:
      json.dump({"by_step": dict(by_step), "other_threads": other_threads[0],
                 "names": dict(names)}, f)

  atexit.register(write)


if __name__ == "__main__":
  from vivit_knn import cli, main

  out = sys.argv.pop(1)
  sys.argv[0] = "vivit_knn.main"
  cli.quiet_startup()
  install(out)
  main.run()
