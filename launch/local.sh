#!/usr/bin/env bash
# Train on this machine. With NUM_PROCESSES > 1, starts that many processes connected through
# a coordinator on 127.0.0.1 (each sees DEVICES_PER_PROCESS of the local devices: CPU devices
# are simulated), which exercises the multi-host code paths on one machine.
#
#   launch/local.sh [CONFIG] [WORKDIR] [--config.x=y ...]
#
# Environment: NUM_PROCESSES (default 1), DEVICES_PER_PROCESS (CPU only, default 4),
# PORT (default 12355), PYTHON (default: the README's .venv/bin/python when it exists, else
# python3), DRY_RUN=1 prints the commands.
set -euo pipefail

CONFIG=${1:-configs/synthetic_dk.py}
WORKDIR=${2:-runs/local}
shift $(( $# < 2 ? $# : 2 ))
NUM_PROCESSES=${NUM_PROCESSES:-1}
if [ -z "${PYTHON:-}" ]; then
  VENV_PYTHON="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
  if [ -x "$VENV_PYTHON" ]; then PYTHON=$VENV_PYTHON; else PYTHON=python3; fi
fi
BASE=("$PYTHON" -m vivit_knn.main "--config=$CONFIG" "--workdir=$WORKDIR" "$@")

if [ "$NUM_PROCESSES" -le 1 ]; then
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${BASE[@]}"; echo; exit 0; fi
  exec "${BASE[@]}"
fi

PORT=${PORT:-12355}
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}}"
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  CMD=("${BASE[@]}" "--coordinator_address=127.0.0.1:$PORT" "--num_processes=$NUM_PROCESSES"
       "--process_id=$i")
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${CMD[@]}"; echo; else "${CMD[@]}" & pids+=($!); fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
