#!/usr/bin/env bash
# The worker side of launch/tpu_vm.sh, run on every TPU VM worker from the synced repository:
#
#   launch/tpu_worker.sh start --config FILE [--config.k=v ...]   detached `cpt-jax train`
#   launch/tpu_worker.sh status                                   one line: STATE CODE NOTE HOST
#   launch/tpu_worker.sh logs [LINES | -f]                        this worker's log
#   launch/tpu_worker.sh stop                                     SIGTERM: save and stop
#
# start first ends a run still going here (SIGTERM, then SIGKILL after GRACE seconds) and any
# process holding the TPU, and removes libtpu's lockfile; then runs training in its own session
# (setsid + nohup: a dropped ssh connection does not reach it), output appended to
# STATE_DIR/train-HOST.log. Each start has its own id (STATE_DIR/current) and its session writes
# its exit code to STATE_DIR/exit_code.ID, so a previous run ending late never shows as this one.
# A trainer aborted by jax's coordination service (a peer died or stopped answering: SIGABRT,
# 134, with "heartbeat" or "coordination" in its last log lines) is recorded as 75, a temporary
# failure that `tpu_vm.sh start --restart` starts again, with one line saying so.
# status: STATE is running | exited | absent; CODE the exit code (- while running); NOTE is
# interrupted (stopped by a signal, checkpoint saved), stopped (by `stop`) or -.
# Environment: STATE_DIR (default ~/.cpt-jax), CPT_JAX (default .venv/bin/cpt-jax), GRACE (120).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CPT=${CPT_JAX:-"$ROOT/.venv/bin/cpt-jax"}
STATE=${STATE_DIR:-"$HOME/.cpt-jax"}
GRACE=${GRACE:-120}
HOST=$(hostname)
LOG="$STATE/train-$HOST.log"

pid_of() { [ -f "$STATE/$1.pid" ] && cat "$STATE/$1.pid" || true; }
current() { [ -f "$STATE/current" ] && cat "$STATE/current" || true; }
code_file() { echo "$STATE/exit_code.$(current)"; }
running() { local p; p=$(pid_of train); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

stop_run() {  # SIGTERM the trainer, wait up to GRACE s, then SIGKILL its whole session
  local p s i
  p=$(pid_of train); s=$(pid_of session)
  [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < GRACE; i++)); do running || break; sleep 1; done
  if running; then
    kill -KILL -- "-$s" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
  else  # let the session record the exit code
    for ((i = 0; i < 50; i++)); do [ -z "$p" ] || [ -f "$(code_file)" ] && break; sleep 0.1; done
  fi
}

clean() {  # what blocks a new start: an old run, other TPU users, libtpu's lockfile
  stop_run
  local holders
  holders=$(lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null || true)
  if [ -n "$holders" ]; then
    echo "$HOST: ending stale TPU processes $holders" >&2
    kill -KILL $holders 2>/dev/null || sudo -n kill -KILL $holders 2>/dev/null || true
  fi
  rm -f /tmp/libtpu_lockfile 2>/dev/null || sudo -n rm -f /tmp/libtpu_lockfile 2>/dev/null || true
}

case "${1:-}" in
  start)
    shift
    clean
    mkdir -p "$STATE"
    rm -f "$STATE"/exit_code* "$STATE/stopped" "$STATE/train.pid" "$STATE/session.pid"
    id="$(date -u +%Y%m%dT%H%M%S).$$"
    echo "$id" >"$STATE/current"
    echo "=== $(date -u +%FT%TZ) start $id: $*" >>"$LOG"
    # shellcheck disable=SC2016
    setsid nohup bash -c '
      echo $$ >"$0/session.pid"
      "${@:2}" &
      echo $! >"$0/train.pid"
      rc=0; wait $! || rc=$?
      if [ "$rc" = 134 ] && sed -n "/ start $1:/,\$p" "$0/train-$(hostname).log" | tail -n 60 |
          grep -qiE "heartbeat|coordination"; then
        echo "$(hostname): the trainer was aborted because another process died or stopped answering: exit 75 (restart)"
        rc=75
      fi
      echo "$rc" >"$0/exit_code.$1"
    ' "$STATE" "$id" "$CPT" train "$@" --config.mesh.distributed=on >>"$LOG" 2>&1 </dev/null &
    for _ in $(seq 50); do [ -f "$STATE/train.pid" ] && break; sleep 0.1; done
    [ -f "$STATE/train.pid" ] || echo 127 >"$STATE/exit_code.$id"  # the session never came up
    echo "$HOST: started (log $LOG)"
    ;;
  status)
    if running; then
      echo "running - - $HOST"
    elif [ -f "$(code_file)" ]; then
      note=-
      last=$(sed -n "/^=== .* start $(current):/,\$p" "$LOG" 2>/dev/null | grep '"interrupted":' | tail -n 1 || true)
      if [ -f "$STATE/stopped" ]; then note=stopped
      elif [[ $last == *'"SIG'* ]]; then note=interrupted
      fi
      echo "exited $(cat "$(code_file)") $note $HOST"
    elif [ -n "$(current)" ] && [ ! -f "$STATE/train.pid" ]; then
      echo "running - - $HOST"  # started, its trainer not yet up
    else
      echo "absent - - $HOST"
    fi
    ;;
  logs)
    if [ "${2:-}" = -f ]; then exec tail -n 50 -F "$LOG"; fi
    [[ ${2:-50} =~ ^[0-9]+$ ]] || { echo "tpu_worker.sh: logs takes a number of lines or -f, got '$2'" >&2; exit 2; }
    tail -n "${2:-50}" "$LOG" 2>/dev/null | sed "s/^/[$HOST] /"
    ;;
  stop)
    mkdir -p "$STATE"; touch "$STATE/stopped"
    stop_run
    echo "$HOST: stopped"
    ;;
  *)
    echo "usage: $0 start --config FILE [--config.k=v ...] | status | logs [LINES|-f] | stop" >&2
    exit 2
    ;;
esac
