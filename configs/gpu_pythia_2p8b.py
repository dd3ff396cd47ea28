"""Continue pretraining Pythia-2.8B on 2 SLURM nodes of 8 H100 80GB each (16 GPUs).

Start it with the SLURM launcher (one task per node, owning its 8 GPUs)::

    sbatch --nodes=2 launch/slurm_gpu.sbatch --config configs/gpu_pythia_2p8b.py \\
        --config.train.init_from=/shared/ckpt/pythia-2.8b --config.data.dir=/shared/data/mine \\
        --config.data.domains=mydomain --config.data.replay_domains=general \\
        --config.run_dir=/shared/runs/pythia-2.8b

Placeholders as in configs/tpu_pythia_410m.py: ``train.init_from`` (Pythia-2.8B converted with
``cpt-jax convert --from-hf``), ``data.dir`` / ``data.domains`` / ``data.replay_domains`` (a
``cpt-jax tokenize`` output on the shared filesystem) and ``run_dir`` (shared by both nodes).

Layout: all 16 GPUs on ``fsdp``, bf16 compute, cuDNN flash attention, remat ``dots``, 8
sequences of 2048 tokens per GPU (128 per step), the loss over blocks of 512 positions.
Compiled for ``2x8xh100`` with ``cpt-jax compile``: COMPILED_PEAK.
"""

import os

from cpt_jax.config import load_module


def get_config():
    shared = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tpu_pythia_410m.py"))
    c = shared.tpu_cpt("2.8b", remat="dots", batch=128)
    c.run_dir = "runs/gpu_pythia_2p8b"  # placeholder: a directory both nodes see
    c.model.attention = "cudnn"
    return c
