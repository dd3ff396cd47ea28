"""LAWA (Sanyal et al. 2023) at a high and a low peak learning rate under a cosine schedule, the
experiment of ``cpt-jax reproduce --parts lawa``.

A tiny Pythia trains from scratch on the general mixture (books, legal, techdocs, science,
reference, equal shares) with Pythia's schedule (1% warmup, cosine to 0.1 eta_max); online LAWA
keeps the k = 5 latest snapshots taken every nu = 2 steps (a window of (k - 1) nu = 8 steps, 3-17%
of the steps so far from step 48 to the end, like the paper's windows), and every eval scores both
the latest parameters (``eval/``) and their average (``eval_lawa/``) on the same held-out batches.
Each LR runs three seeds; the same seed gives both LRs the same data order.

    PYTHONPATH=. cpt-jax experiment --config configs/repro_lawa.py:full   # (or :tiny)
"""

from experiments.repro import settings

LRS = {"high": 1e-2, "low": 1e-3}
SEEDS = (0, 1, 2)


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/lawa")
    c.train.steps = settings.steps(size, 200, 12)
    c.train.eval_every = settings.steps(size, 16, 2)
    c.train.eval_batches = settings.steps(size, 2, 1)  # latest and LAWA are scored on the same batches
    c.data.domains = ",".join(settings.UPSTREAM)
    c.data.weights = settings.uniform(settings.UPSTREAM)
    c.data.upstream = ",".join(settings.UPSTREAM)
    c.schedule.name = "cosine"
    c.lawa.k = settings.steps(size, 5, 2)
    c.lawa.every = settings.steps(size, 2, 1)
    return c


def get_runs(c):
    return [{"name": f"{name}_s{seed}", "set": {"optim.peak_lr": lr, "seed": seed}}
            for name, lr in LRS.items() for seed in SEEDS]
