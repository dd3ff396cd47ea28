#!/usr/bin/env bash
# N cooperating JAX processes on this host (CPU), as a multi-host run would have one per host:
# each gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, so
# cpt_jax.sharding.maybe_initialize_distributed() calls jax.distributed.initialize(), and each
# process feeds its rows of the global batch. Process 0 writes the run's files.
#
#   launch/local_multiprocess.sh N DEVICES_PER_PROCESS --config configs/tiny.py [--config.k=v ...]
#
# Logs: RUN_LOG_DIR (default /tmp/cpt-jax-local) / process_<i>.log. Exit code: the first failure.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS --config FILE [--config.key=value ...]" >&2
  exit 2
fi
N=$1; DEV=$2; shift 2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CPT=${CPT_JAX:-"$ROOT/.venv/bin/cpt-jax"}
[ -x "$CPT" ] || CPT=cpt-jax
PORT=${PORT:-$((20000 + RANDOM % 20000))}
LOGS=${RUN_LOG_DIR:-/tmp/cpt-jax-local}
mkdir -p "$LOGS"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu \
  JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
  XLA_FLAGS="--xla_force_host_platform_device_count=$DEV" \
  JAX_COORDINATOR_ADDRESS="localhost:$PORT" JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$i" \
    "$CPT" train "$@" --config.mesh.distributed=on >"$LOGS/process_$i.log" 2>&1 &
  pids+=($!)
done
code=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    rc=$?
    echo "process $i failed (exit $rc); see $LOGS/process_$i.log" >&2
    [ "$code" -ne 0 ] || code=$rc
  fi
done
[ "$code" -ne 0 ] || cat "$LOGS/process_0.log"
exit "$code"
