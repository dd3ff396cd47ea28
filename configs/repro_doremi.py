"""DoReMi over the ten domains (Xie et al. 2023), the config of ``cpt-jax reproduce --parts doremi``.

A doremi workflow config (``cpt-jax doremi --config configs/repro_doremi.py:full``), not an
experiment: round 1's reference trains on the token-proportional mixture and doubles as the
seed-0 baseline; the proxy (Group DRO, eta = 0.1, c = 1e-3) trains from the same
initialisation on the uniform stratified mixture; the main run trains on alpha_bar. All three
are the same tiny size (the paper's main model is larger than its proxy). 16 x 64 tokens per
step (the same tokens as 8 x 128) so that every proxy batch holds every one of the ten domains.
"""

from experiments.repro import settings


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/doremi")
    c.train.steps = settings.steps(size, 100)  # reference (= baseline), main
    c.train.batch_size = 16 if size == "full" else 10  # >= 10 domains: each in every proxy batch
    c.train.seq_len = 64 if size == "full" else 16
    c.train.eval_every = settings.steps(size, 25, 2)  # eval curves: steps to the baseline's loss
    c.train.eval_batches = settings.steps(size, 2, 1)  # x 10 domains; paired: same batches for every run
    c.data.domains = ",".join(settings.ALL_DOMAINS)
    c.doremi.reference_weights = "proportional"  # the natural (token-count) mixture
    c.doremi.proxy_weights = "uniform"
    c.doremi.proxy_steps = settings.steps(size, 100)
    c.doremi.eta = 0.1  # the paper's 1 swings alpha to one-hot with ~1.6 sequences per domain per step
    c.doremi.c = 1e-3
    return c
