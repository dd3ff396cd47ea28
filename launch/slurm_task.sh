#!/usr/bin/env bash
# One SLURM task of launch/slurm_gpu.sbatch: one JAX process, owning every GPU the task sees,
# or, when several tasks share a node (SLURM_NTASKS_PER_NODE > 1), task SLURM_LOCALID's equal
# share of them (task 1 of 4 on 8 GPUs: GPUs 2,3). Runs `cpt-jax train "$@"`; its exit code is
# the task's. GPUs that do not split evenly, or a SLURM_LOCALID not below the tasks per node,
# are refused in one line (exit 2).
#
# Environment (all optional): CPT_JAX (the cpt-jax executable, default .venv/bin/cpt-jax),
# JAX_LOCAL_DEVICE_IDS (default: this task's share of the visible GPUs), XLA_FLAGS (the GPU
# flags below are appended), JAX_COORDINATOR_PORT (default: derived from SLURM_JOB_ID by jax).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CPT=${CPT_JAX:-"$ROOT/.venv/bin/cpt-jax"}
[ -x "$CPT" ] || CPT=cpt-jax
# jax's SLURM detection gives process k only GPU SLURM_LOCALID; this process owns its share.
if [ -z "${JAX_LOCAL_DEVICE_IDS:-}" ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    n=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
  else
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  per_node=${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}
  per_node=${per_node%%[!0-9]*}  # "4(x2)" -> 4
  per_node=${per_node:-1}
  local_id=${SLURM_LOCALID:-0}
  if ! [[ $per_node =~ ^[1-9][0-9]*$ && $local_id =~ ^[0-9]+$ ]] || [ "$local_id" -ge "$per_node" ]; then
    echo "slurm_task.sh: SLURM_LOCALID '$local_id' must be below SLURM_NTASKS_PER_NODE '$per_node' (whole numbers)" >&2
    exit 2
  fi
  if [ "${n:-0}" -gt 0 ]; then
    if [ $((n % per_node)) -ne 0 ]; then
      echo "slurm_task.sh: $n GPUs on $(hostname) cannot be shared evenly by $per_node tasks" >&2
      exit 2
    fi
    share=$((n / per_node)); first=$((local_id * share))
    export JAX_LOCAL_DEVICE_IDS=$(seq -s, "$first" $((first + share - 1)))
  fi
fi
# Overlap collectives and weight prefetch with compute (see docs/perf_notes.md).
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_while_loop_double_buffering=true \
--xla_gpu_enable_highest_priority_async_stream=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
echo "task ${SLURM_PROCID:-?}/${SLURM_NTASKS:-?} on $(hostname): local devices ${JAX_LOCAL_DEVICE_IDS:-all}" >&2
exec "$CPT" train "$@"
