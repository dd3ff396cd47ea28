#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (v4 / v5e / v5p / v6e pod slices): one JAX process per worker,
# run detached on every worker by launch/tpu_worker.sh; jax.distributed.initialize() finds the
# other workers itself (mesh.distributed=on). Run from the repository root:
#
#   launch/tpu_vm.sh setup                                   sync the code, make .venv, install '.[tpu]'
#   launch/tpu_vm.sh start [--restart] --config FILE [--config.k=v ...]
#                                                            sync code + config, clean, start detached
#   launch/tpu_vm.sh status | logs [LINES | -f] | stop | wait
#
# start: syncs the repository's files (git-tracked and untracked-but-not-ignored; a --config
# file outside the repository is copied too) to REPO_DIR on every worker, ends stale runs and
# libtpu's lockfile there, and starts training in its own session (a dropped ssh connection
# does not stop it), one log per worker. It returns once every worker has started.
# wait: polls until no worker runs; exits with the first non-zero training exit code (or 0).
# stop: SIGTERM on every worker: all finish the same step, save a checkpoint and exit.
# start --restart: stays, polls every POLL seconds, and starts the run again when it was
# interrupted (a maintenance event, a spot preemption) or exited 75 (a temporary failure: a
# storage outage, a lost peer) -- training resumes from the newest checkpoint under
# RUN_DIR/checkpoints. A TPU that is not READY is waited for; with CREATE_ARGS set, one that two
# describes in a row (POLL s apart) report PREEMPTED or TERMINATED is deleted and created again
# (`gcloud compute tpus tpu-vm create NAME CREATE_ARGS`, e.g. "--accelerator-type=v5litepod-16
# --version=v2-alpha-tpuv5-lite --spot") and set up; a describe that fails is never read as a
# state. It ends with the run: 0 when finished or stopped, else the failing exit code.
#
# Environment: TPU_NAME, ZONE (required), PROJECT, REPO_DIR (on the workers, relative to the
# home directory; default cpt-jax), POLL (seconds, default 60), DRY_RUN=1 (print the gcloud
# commands instead of running them). The run directory must be on storage all workers see
# (a shared filesystem or a bucket): checkpoints from all hosts land in one place.
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
CMD=$1; shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REPO_DIR=${REPO_DIR:-cpt-jax}
POLL=${POLL:-60}
[[ $POLL =~ ^[0-9]+([.][0-9]+)?$ ]] && [[ $POLL != 0 ]] || { echo "tpu_vm.sh: POLL must be a positive number of seconds, got '$POLL'" >&2; exit 2; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
LOC=(--zone="$ZONE")
[ -z "${PROJECT:-}" ] || LOC+=(--project="$PROJECT")

gc() {  # run (or with DRY_RUN=1 print) one gcloud command
  if [ -n "${DRY_RUN:-}" ]; then printf '%q ' gcloud "$@" | sed 's/ $//'; echo; return 0; fi
  gcloud "$@"
}
on_all() { gc compute tpus tpu-vm ssh "$TPU_NAME" "${LOC[@]}" --worker=all --command="$1"; }
# the job identity of the run's lease: a recreated slice (new hostnames) is still this job
worker() { on_all "cd $REPO_DIR && CPT_JAX_JOB_ID=tpu:$TPU_NAME bash launch/tpu_worker.sh $1"; }
tpu_state() {  # the TPU's state, or UNKNOWN when describe fails or prints nothing
  local s
  s=$(gc compute tpus tpu-vm describe "$TPU_NAME" "${LOC[@]}" --format='value(state)' 2>/dev/null) || s=""
  echo "${s:-UNKNOWN}"
}
gone() {  # two describes POLL s apart agree the TPU was preempted or terminated
  local first=$1 second
  [[ $first =~ ^(PREEMPTED|TERMINATED)$ ]] || return 1
  sleep "$POLL"
  second=$(tpu_state)
  [ "$second" = "$first" ]
}

ARGS=()
EXTRA=$TMP/extra  # files from outside the repository, shipped as .launch/NAME
take_args() {  # ARGS=("$@") with each --config FILE made relative to the repository root
  ARGS=("$@")
  local i f abs
  for ((i = 0; i + 1 < ${#ARGS[@]}; i++)); do
    [ "${ARGS[$i]}" = --config ] || continue
    f=${ARGS[$((i + 1))]}
    [ -f "$f" ] || { echo "config file $f not found" >&2; exit 2; }
    abs="$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"
    if [[ $abs == "$ROOT"/* ]]; then
      ARGS[$((i + 1))]=${abs#"$ROOT"/}
    else
      mkdir -p "$EXTRA/.launch"; cp "$abs" "$EXTRA/.launch/"
      ARGS[$((i + 1))]=.launch/$(basename "$f")
    fi
  done
}

pack() {  # the repository's files (git-tracked, and untracked but not ignored) + EXTRA -> $PACK
  PACK=$TMP/cpt-jax-sync.tgz
  (cd "$ROOT" && git ls-files -co --exclude-standard | while IFS= read -r f; do
    if [ -e "$f" ]; then printf '%s\n' "$f"; fi
  done) >"$TMP/files"
  local more=()
  [ ! -d "$EXTRA/.launch" ] || more=(-C "$EXTRA" .launch)
  tar -czf "$PACK" -C "$ROOT" -T "$TMP/files" ${more[@]+"${more[@]}"}
}

sync() {
  pack
  gc compute tpus tpu-vm scp "$PACK" "$TPU_NAME:cpt-jax-sync.tgz" "${LOC[@]}" --worker=all
  on_all "mkdir -p $REPO_DIR && tar -xzf cpt-jax-sync.tgz -C $REPO_DIR && rm -f cpt-jax-sync.tgz"
}

setup() {
  sync
  on_all "cd $REPO_DIR && { [ -x .venv/bin/python ] || python3 -m venv .venv; } && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e '.[tpu]'"
}

start() {
  sync
  worker "start$(printf ' %q' "${ARGS[@]}")"
}

statuses() { worker status 2>/dev/null | grep -oE '(running|exited|absent) .*' || true; }

wait_done() {  # until no worker runs; the first non-zero exit code
  local lines
  while :; do
    lines=$(statuses)
    if [ -n "$lines" ] && ! grep -q '^running' <<<"$lines"; then break; fi
    sleep "$POLL"
  done
  echo "$lines"
  awk '$1 == "exited" && $2 != "0" { print $2; exit }' <<<"$lines" | grep . || echo 0
}

recreate() {
  echo "recreating $TPU_NAME" >&2
  gc compute tpus tpu-vm delete "$TPU_NAME" "${LOC[@]}" --quiet || true
  # shellcheck disable=SC2086
  gc compute tpus tpu-vm create "$TPU_NAME" "${LOC[@]}" $CREATE_ARGS
  setup
}

watch() {  # the restart loop of `start --restart`
  local state lines rc
  while :; do
    sleep "$POLL"
    state=$(tpu_state)
    if [ "$state" = UNKNOWN ]; then
      echo "$(date -u +%FT%TZ) describing $TPU_NAME failed: asking again in $POLL s" >&2
      continue
    fi
    if [ "$state" != READY ]; then
      echo "$(date -u +%FT%TZ) $TPU_NAME is $state" >&2
      fresh=""
      if [ -n "${CREATE_ARGS:-}" ] && gone "$state"; then recreate; fresh=1; fi
      while [ "$(tpu_state)" != READY ]; do sleep "$POLL"; done
      # a slice that came back by itself with the run still going is left alone
      if [ -z "$fresh" ] && grep -q '^running' <<<"$(statuses)"; then continue; fi
      start
      continue
    fi
    lines=$(statuses)
    [ -n "$lines" ] && ! grep -q '^running' <<<"$lines" || continue
    echo "$lines" >&2
    if grep -q ' stopped ' <<<"$lines"; then return 0; fi
    rc=$(awk '$1 == "exited" && $2 != "0" && $2 != "75" { print $2; exit }' <<<"$lines")
    if [ -n "$rc" ]; then return "$rc"; fi
    if grep -qE ' interrupted |^exited 75 ' <<<"$lines"; then
      echo "$(date -u +%FT%TZ) interrupted or a temporary failure (75): starting again from the newest checkpoint" >&2
      start
      continue
    fi
    return 0  # finished
  done
}

case "$CMD" in
  setup) setup ;;
  sync) take_args "$@"; sync ;;
  start)
    restart=""
    if [ "${1:-}" = --restart ]; then restart=1; shift; fi
    [ $# -ge 2 ] || usage
    take_args "$@"
    start
    if [ -n "$restart" ]; then
      if [ -n "${DRY_RUN:-}" ]; then
        echo "# then every $POLL s: describe (state), status; start again when interrupted"
        exit 0
      fi
      watch
    fi
    ;;
  status) worker status ;;
  logs) worker "logs${1:+ $(printf '%q' "$1")}" ;;
  stop) worker stop ;;
  wait)
    if [ -n "${DRY_RUN:-}" ]; then worker status; exit 0; fi
    out=$(wait_done)
    sed '$d' <<<"$out"
    exit "$(tail -n 1 <<<"$out")"
    ;;
  *) usage ;;
esac
