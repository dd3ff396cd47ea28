"""The tiny CPU configuration the tests and examples use (synthetic data, 2 layers, d = 64)."""

from cpt_jax.config import base


def get_config():
    c = base()
    c.run_dir = "runs/tiny"
    c.train.steps = 20
    c.train.batch_size = 8
    c.train.seq_len = 32
    c.train.log_every = 5
    return c
