"""Ahead-of-time compilation of the train step for accelerators this host does not have:
named slices and their chips (``topology``), and the compiled step's memory plan, FLOPs,
collectives and roofline (``plan``).

The CUDA compiler plugin is kept out of the environment's site-packages (once installed there,
every jax process on a GPU-less host would probe it and log about missing drivers): it lives in
``$CPT_JAX_CUDA_COMPILER``, by default ``<environment>/aot-cuda``, which is put first on the
path here, before jax discovers its plugins (first, so that its ``nvidia.cudnn`` wins over any
other copy of NVIDIA's namespace package).
"""

import os
import sys

CUDA_COMPILER_DIR = os.environ.get("CPT_JAX_CUDA_COMPILER") or os.path.join(sys.prefix, "aot-cuda")
if os.path.isdir(CUDA_COMPILER_DIR) and CUDA_COMPILER_DIR not in sys.path:
    sys.path.insert(0, CUDA_COMPILER_DIR)
