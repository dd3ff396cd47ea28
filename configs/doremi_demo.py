"""DoReMi on CPU in minutes: reference, Group-DRO proxy, main run on alpha_bar vs baseline.

On the demo corpus (``cpt-jax corpus --out data/demo --domains books,legal,code_python``) when
it is there; otherwise on the three synthetic domains (noise: unlearnable, pattern: learnable,
trivial: one repeated token), and the command's first line says which. The reference trains
on the token-proportional mixture and doubles as the baseline (same weights, steps and seed).
eta = 0.1 rather than the paper's 1: with 16 sequences per step lambda is a noisy estimate
and eta = 1 swings alpha to near one-hot from step to step (a known pitfall).

    cpt-jax doremi --config configs/doremi_demo.py
"""

import os

from cpt_jax.config import base

CORPUS = "data/demo"


def get_config():
    c = base()
    c.run_dir = "runs/doremi_demo"
    c.train.steps = 150  # reference (= baseline) and main run
    c.train.batch_size = 16
    c.train.seq_len = 32
    c.train.log_every = 25
    c.train.eval_every = 25
    c.train.eval_batches = 4
    c.train.progress = False
    c.optim.peak_lr = 1e-2
    c.checkpoint.every = 100
    c.doremi.eta = 0.1
    c.doremi.c = 1e-3
    c.doremi.proxy_steps = 150
    c.doremi.reference_weights = "proportional"
    if os.path.isfile(os.path.join(CORPUS, "manifest.json")):
        c.data.source = "tokenized"
        c.data.dir = CORPUS
        c.data.domains = "books,legal,code_python"
        c.model.vocab_size = 50304  # Pythia's tokenizer, padded
        c.model.hidden_size = 64
        c.model.num_layers = 2
        c.model.num_heads = 4
        c.optim.peak_lr = 3e-3
    else:
        c.data.source = "synthetic"
        c.data.synthetic_tokens = 1 << 16
        c.model.vocab_size = 16
        c.model.hidden_size = 32
        c.model.num_layers = 2
        c.model.num_heads = 2
    return c
