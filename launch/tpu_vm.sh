#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: the same command on every worker (one JAX process per host).
# mesh.distributed=on: jax.distributed.initialize() finds the other workers through the TPU
# metadata server; every worker reads its rows of each batch.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh --config configs/X.py [--config.k=v ...]
#
# Expects the repository checked out at REPO_DIR (default ~/cpt-jax) on every worker with
# `pip install -e '.[tpu]'` done, and the run directory on storage all workers see (a GCS
# path or a shared filesystem) so that checkpoints from all hosts land in one place.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
PROJECT_ARG=${PROJECT:+--project=$PROJECT}
REPO_DIR=${REPO_DIR:-'~/cpt-jax'}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_ARG --worker=all \
  --command="cd $REPO_DIR && .venv/bin/cpt-jax train$ARGS --config.mesh.distributed=on 2>&1 | tee -a /tmp/cpt-jax-train.log"
