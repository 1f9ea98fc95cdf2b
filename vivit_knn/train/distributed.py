"""Multi-process start-up through JAX's own runtime (`jax.distributed`).

On Cloud TPU pods and SLURM clusters JAX finds the coordinator by itself; elsewhere
pass `--coordinator_address`, `--num_processes` and `--process_id` to every process.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
from absl import logging

from vivit_knn import stop_signals


def maybe_initialize(coordinator_address: Optional[str] = None,
                     num_processes: Optional[int] = None,
                     process_id: Optional[int] = None) -> bool:
  """Calls `jax.distributed.initialize` when running as one of several processes; whether it did.

  Explicit arguments win, else SLURM / TPU pods are detected. Must run before JAX touches devices.
  """
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
  tpu_pod = len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
  if coordinator_address is not None:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id too")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
  elif not (slurm or tpu_pod):
    return False
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    # CPU processes need an explicit cross-process collectives backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  stop_signals.rearm()
  logging.info("Process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
