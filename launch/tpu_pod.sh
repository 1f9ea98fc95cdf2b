#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: create the VM (if needed), copy the repo to every worker,
# install, and start the same command on all workers. JAX finds the pod's coordinator itself.
#
#   launch/tpu_pod.sh NAME ZONE CONFIG gs://BUCKET/WORKDIR [--config.x=y ...]
#
# Environment: ACCELERATOR (default v4-32), TPU_VERSION (default tpu-ubuntu2204-base),
# PROJECT (gcloud default if unset), DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

if [ $# -lt 4 ]; then
  echo "usage: $0 NAME ZONE CONFIG gs://BUCKET/WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
case "$WORKDIR" in
  gs://*) ;;
  *) echo "WORKDIR must be a gs:// path: every worker writes checkpoints there" >&2; exit 2 ;;
esac
ACCELERATOR=${ACCELERATOR:-v4-32}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO_DIR=vivit_knn

run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [ "${DRY_RUN:-0}" = 1 ] || ! gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" $PROJECT_FLAG >/dev/null 2>&1; then
  run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" $PROJECT_FLAG \
    --accelerator-type="$ACCELERATOR" --version="$TPU_VERSION"
fi
run gcloud compute tpus tpu-vm scp --recurse --worker=all --zone="$ZONE" $PROJECT_FLAG \
  "$(cd "$(dirname "$0")/.." && pwd)" "$NAME:$REPO_DIR"
INSTALL="cd $REPO_DIR && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==0.10.2'"
TRAIN="cd $REPO_DIR && .venv/bin/python -m vivit_knn.main --config=$CONFIG --workdir=$WORKDIR $*"
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all --zone="$ZONE" $PROJECT_FLAG --command="$INSTALL"
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all --zone="$ZONE" $PROJECT_FLAG --command="$TRAIN"
