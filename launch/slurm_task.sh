#!/usr/bin/env bash
# One SLURM task of launch/slurm_gpu.sbatch: the JAX process of this node, owning every GPU
# the task sees. Runs `cpt-jax train "$@"`; its exit code is the task's.
#
# Environment (all optional): CPT_JAX (the cpt-jax executable, default .venv/bin/cpt-jax),
# JAX_LOCAL_DEVICE_IDS (default: every visible GPU), XLA_FLAGS (the GPU flags below are
# appended), JAX_COORDINATOR_PORT (default: derived from SLURM_JOB_ID by jax).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CPT=${CPT_JAX:-"$ROOT/.venv/bin/cpt-jax"}
[ -x "$CPT" ] || CPT=cpt-jax
# jax's SLURM detection gives process k only GPU SLURM_LOCALID; this process owns them all.
if [ -z "${JAX_LOCAL_DEVICE_IDS:-}" ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    n=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
  else
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  if [ "${n:-0}" -gt 0 ]; then export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((n - 1))); fi
fi
# Overlap collectives and weight prefetch with compute (see docs/perf_notes.md).
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_while_loop_double_buffering=true \
--xla_gpu_enable_highest_priority_async_stream=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
echo "task ${SLURM_PROCID:-?}/${SLURM_NTASKS:-?} on $(hostname): local devices ${JAX_LOCAL_DEVICE_IDS:-all}" >&2
exec "$CPT" train "$@"
