"""Continue pretraining Pythia-410M on a Cloud TPU v4-8 (4 chips) or v5e-8 (8 chips).

Start it from your machine (the slice exists, ``launch/tpu_vm.sh setup`` has run)::

    export TPU_NAME=my-v4-8 ZONE=us-central2-b
    launch/tpu_vm.sh start --config configs/tpu_pythia_410m.py \\
        --config.train.init_from=gs://MY_BUCKET/ckpt/pythia-410m \\
        --config.data.dir=gs://MY_BUCKET/data/mine --config.data.domains=mydomain \\
        --config.data.replay_domains=general --config.run_dir=gs://MY_BUCKET/runs/pythia-410m-tpu

Placeholders to set:

- ``train.init_from``: the Pythia-410M weights, converted once with
  ``cpt-jax convert --from-hf path/to/pythia-410m --to ckpt/pythia-410m`` and copied to a
  bucket every worker reads (left empty, the run starts from random weights);
- ``data.dir``: the output of ``cpt-jax tokenize``, on a bucket or a disk every worker sees;
  ``data.domains`` / ``data.replay_domains`` name its domains;
- ``run_dir``: where checkpoints go, shared by all workers (a ``gs://`` path works).

Layout: all chips on ``fsdp`` (4 on a v4-8, 8 on a v5e-8), splash attention (the Pallas TPU
kernel, per shard), remat ``dots``; 32 sequences of 2048 tokens per step are 8 per chip on a
v4-8 and 4 per chip on a v5e-8. Compiled for both with ``cpt-jax compile`` (jax 0.10.2, libtpu
0.0.42.1): peak 10.05 GiB per chip of 32 on a v4-8, 5.35 GiB of 16 on a v5e-8 (arguments 0.57,
temporaries 4.78). The schedule re-warms from Pythia's final LR to its peak and re-decays, with
5% replay (as in configs/cpt_pythia.py).
"""

import os

from cpt_jax.config import load_module


def tpu_cpt(size: str, remat: str, batch: int):
    """configs/cpt_pythia.py's recipe for Pythia ``size``, laid out for a TPU slice."""
    here = os.path.dirname(os.path.abspath(__file__))
    c = load_module(os.path.join(here, "cpt_pythia.py")).get_config(size)
    c.run_dir = f"runs/tpu_pythia_{size}"  # placeholder: use a gs:// path on a multi-host slice
    c.model.from_checkpoint = ""  # the shape is the preset's, so the config loads without one
    c.model.preset = size
    c.model.attention = "splash"  # falls back to chunked, with one line, where it cannot run
    c.model.attention_block_q = 512
    c.model.attention_block_kv = 512
    c.model.remat = remat
    c.mesh.data = 1
    c.mesh.fsdp = -1  # every chip of the slice
    c.mesh.tensor = 1
    c.train.init_from = ""  # placeholder: the converted Pythia checkpoint (see the docstring)
    c.train.batch_size = batch
    c.train.vocab_chunk = 512  # loss over blocks of 512 positions: no full [B, T, V] logits
    c.data.dir = ""  # placeholder: the `cpt-jax tokenize` output (see the docstring)
    return c


def get_config():
    return tpu_cpt("410m", remat="dots", batch=32)
