# Sourced by the other scripts (from the repository root). setup_venv [EXTRAS] makes .venv if it
# is missing and installs cpt-jax into it (editable), with the extras named (e.g. "test").
# PYTHON picks the interpreter (Python >= 3.11).
setup_venv() {
  local python=${PYTHON:-python3}
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${1:+[$1]}"
}

# tune_malloc_for_cpu_training: glibc keeps freed memory for reuse (one arena, no per-buffer
# mmap, no trimming) unless GLIBC_TUNABLES is already set. XLA on the CPU allocates each step's
# large buffers (the logits at Pythia's vocabulary are hundreds of MB) with malloc; by default
# glibc maps them fresh and the kernel zeroes them again every step. Same numbers, about a
# quarter less wall time on 2 cores (bench/cpu_malloc.py, docs/benchmarks.md).
tune_malloc_for_cpu_training() {
  export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184}
}
