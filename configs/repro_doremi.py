"""DoReMi over the ten domains (Xie et al. 2023), the config of ``cpt-jax reproduce --parts doremi``.

A doremi workflow config (``cpt-jax doremi --config configs/repro_doremi.py:full``), not an
experiment. The baseline is a natural, skewed mixture: the token-proportional mixture of a
corpus whose domains have the unequal sizes of ``NATURAL`` (general text dominates, code and
math are small, as in the Pile), set as weights because the built corpus holds about the same
number of tokens per domain. Round 1's reference trains on it and doubles as the baseline; the
proxy (Group DRO, eta = 0.1, c = 1e-3) trains from the same initialisation on the uniform
stratified mixture; the main run trains on alpha_bar. The reproduction runs the whole workflow
once per seed (three), so alpha_bar's spread over proxy seeds is measured too. All runs are the
same tiny size (the paper's main model is larger than its proxy). 16 x 64 tokens per step (the
same tokens as 8 x 128) so that every proxy batch holds every one of the ten domains.
"""

from experiments.repro import settings

NATURAL = {"books": 0.28, "reference": 0.20, "science": 0.16, "legal": 0.10, "techdocs": 0.08,
           "code_python": 0.06, "math": 0.04, "code_c": 0.035, "code_go": 0.025, "code_rust": 0.02}
SEEDS = (0, 1, 2)


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/doremi")
    c.train.steps = settings.steps(size, 100, 6)  # reference (= baseline), main
    c.train.batch_size = {"full": 16, "tiny": 10, "gpu": 32}[size]  # >= 10 domains: each in every proxy batch
    c.train.seq_len = {"full": 64, "tiny": 16, "gpu": 256}[size]
    c.train.eval_every = settings.steps(size, 10, 2)  # eval curves: steps to the baseline, the room fit
    c.train.eval_batches = settings.steps(size, 2, 1)  # x 10 domains; paired: same batches for every run
    c.data.domains = ",".join(settings.ALL_DOMAINS)
    c.doremi.reference_weights = ",".join(f"{d}={w:g}" for d, w in NATURAL.items())
    c.doremi.proxy_weights = "uniform"
    c.doremi.proxy_steps = settings.steps(size, 100, 6)
    c.doremi.eta = 0.1  # the paper's 1 swings alpha to one-hot with ~1.6 sequences per domain per step
    c.doremi.c = 1e-3
    return c
