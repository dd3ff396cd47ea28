"""Continue pretraining Pythia-1.4B on a Cloud TPU v4-8 (4 chips) or v5e-8 (8 chips).

Start it like configs/tpu_pythia_410m.py (same placeholders: ``train.init_from`` = the converted
Pythia-1.4B, ``data.dir`` / ``data.domains`` / ``data.replay_domains``, ``run_dir``)::

    launch/tpu_vm.sh start --config configs/tpu_pythia_1p4b.py \\
        --config.train.init_from=gs://MY_BUCKET/ckpt/pythia-1.4b \\
        --config.data.dir=gs://MY_BUCKET/data/mine --config.data.domains=mydomain \\
        --config.data.replay_domains=general --config.run_dir=gs://MY_BUCKET/runs/pythia-1.4b-tpu

Layout: all chips on ``fsdp``, splash attention (per shard), remat ``full``; 32 sequences of
2048 tokens per step are 8 per chip on a v4-8 and 4 per chip on a v5e-8. Compiled for both with
``cpt-jax compile`` (jax 0.10.2, libtpu 0.0.42.1): peak 11.12 GiB per chip of 32 on a v4-8,
5.98 GiB of 16 on a v5e-8 (arguments 1.98, temporaries 4.00).
"""

import os

from cpt_jax.config import load_module


def get_config():
    shared = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tpu_pythia_410m.py"))
    return shared.tpu_cpt("1.4b", remat="full", batch=32)
