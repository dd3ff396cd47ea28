#!/usr/bin/env bash
# N cooperating JAX processes on this host (CPU), as a multi-host run would have one per host:
# each gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, so
# cpt_jax.sharding.maybe_initialize_distributed() calls jax.distributed.initialize(), and each
# process feeds the rows of the global batch that its devices hold. Process 0 writes the run's files.
#
#   launch/local_multiprocess.sh N DEVICES_PER_PROCESS --config configs/tiny.py [--config.k=v ...]
#
# Logs: RUN_LOG_DIR (default /tmp/cpt-jax-local) / process_<i>.log. PORT: the coordinator's
# port on 127.0.0.1 (default: random). CPT_JAX: the cpt-jax executable.
# Exit code: 0 when every process succeeds; otherwise the first failing process's code, and the
# others are sent SIGTERM (they save a checkpoint and stop). INT / TERM / HUP are forwarded.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS --config FILE [--config.key=value ...]" >&2
  exit 2
fi
N=$1; DEV=$2; shift 2
for v in "NUM_PROCESSES=$N" "DEVICES_PER_PROCESS=$DEV"; do
  [[ ${v#*=} =~ ^[1-9][0-9]*$ ]] || { echo "$0: ${v%%=*} must be a positive integer, got '${v#*=}'" >&2; exit 2; }
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CPT=${CPT_JAX:-"$ROOT/.venv/bin/cpt-jax"}
[ -x "$CPT" ] || CPT=cpt-jax
PORT=${PORT:-$((20000 + RANDOM % 20000))}
LOGS=${RUN_LOG_DIR:-/tmp/cpt-jax-local}
mkdir -p "$LOGS"
pids=()
signal_all() { for p in "${pids[@]}"; do kill "-$1" "$p" 2>/dev/null || true; done; }
trap 'signal_all TERM' TERM
trap 'signal_all INT' INT
trap 'signal_all HUP' HUP
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu \
  JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
  XLA_FLAGS="--xla_force_host_platform_device_count=$DEV" \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$i" \
    "$CPT" train "$@" --config.mesh.distributed=on >"$LOGS/process_$i.log" 2>&1 &
  pids+=($!)
done
# Collect exit codes as processes end (a trapped signal interrupts `wait`; keep collecting).
code=0
done_rc=()
while [ "${#done_rc[@]}" -lt "$N" ]; do
  for i in "${!pids[@]}"; do
    [ -z "${done_rc[$i]:-}" ] || continue
    kill -0 "${pids[$i]}" 2>/dev/null && continue
    rc=0; wait "${pids[$i]}" || rc=$?
    done_rc[$i]=$rc
    if [ "$rc" -ne 0 ]; then
      echo "process $i failed (exit $rc); see $LOGS/process_$i.log" >&2
      if [ "$code" -eq 0 ]; then code=$rc; signal_all TERM; fi
    fi
  done
  [ "${#done_rc[@]}" -lt "$N" ] && sleep 0.2
done
[ "$code" -ne 0 ] || cat "$LOGS/process_0.log"
exit "$code"
