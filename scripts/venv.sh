# Sourced by the other scripts (from the repository root). setup_venv [EXTRAS] makes .venv if it
# is missing and installs cpt-jax into it (editable), with the extras named (e.g. "test").
# PYTHON picks the interpreter (Python >= 3.11).
setup_venv() {
  local python=${PYTHON:-python3}
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${1:+[$1]}"
}

# setup_aot_compilers: the TPU and GPU compilers, for compiling the train step ahead of time for
# slices this machine does not have (`cpt-jax compile`; no accelerator needed), at the installed
# jax's version. libtpu comes with jax[tpu]. For the GPU only the CUDA plugin, its PJRT runtime
# and cuDNN (for cuDNN flash attention) are needed, about 0.9 GB instead of the 5 GB of
# jax[cuda12]; they go to .venv/aot-cuda, which cpt_jax.aot puts on the path, so that other jax
# processes do not load the CUDA plugin (it logs about missing drivers on a GPU-less host).
setup_aot_compilers() {
  local v
  v=$(.venv/bin/python -c 'import jax; print(jax.__version__)')
  .venv/bin/python -m pip install -q "jax[tpu]==$v"
  [ -d .venv/aot-cuda/jax_plugins ] || .venv/bin/python -m pip install -q --no-deps --target .venv/aot-cuda \
    "jax-cuda12-plugin==$v" "jax-cuda12-pjrt==$v" "nvidia-cudnn-cu12>=9.8,<10"
}

# tune_malloc_for_cpu_training: glibc keeps freed memory for reuse (one arena, no per-buffer
# mmap, no trimming) unless GLIBC_TUNABLES is already set. XLA on the CPU allocates each step's
# large buffers (the logits at Pythia's vocabulary are hundreds of MB) with malloc; by default
# glibc maps them fresh and the kernel zeroes them again every step. Same numbers, about a
# quarter less wall time on 2 cores (bench/cpu_malloc.py, docs/benchmarks.md).
tune_malloc_for_cpu_training() {
  export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184}
}
