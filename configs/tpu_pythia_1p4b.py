"""Continue pretraining Pythia-1.4B on a Cloud TPU v4-8 (4 chips) or v5e-8 (8 chips).

Start it like configs/tpu_pythia_410m.py (same placeholders: ``train.init_from`` = the converted
Pythia-1.4B, ``data.dir`` / ``data.domains`` / ``data.replay_domains``, ``run_dir``)::

    launch/tpu_vm.sh start --config configs/tpu_pythia_1p4b.py \\
        --config.train.init_from=gs://MY_BUCKET/ckpt/pythia-1.4b \\
        --config.data.dir=gs://MY_BUCKET/data/mine --config.data.domains=mydomain \\
        --config.data.replay_domains=general --config.run_dir=gs://MY_BUCKET/runs/pythia-1.4b-tpu

Layout (estimated in docs/launching.md, "TPU memory plan"): all chips on ``fsdp``, splash
attention, remat ``full``; 32 sequences of 2048 tokens per step are 8 per chip on a v4-8 (about
12 GiB of 32) and 4 per chip on a v5e-8 (about 6 GiB of 16).
"""

import os

from cpt_jax.config import load_module


def get_config():
    shared = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tpu_pythia_410m.py"))
    return shared.tpu_cpt("1.4b", remat="full", batch=32)
