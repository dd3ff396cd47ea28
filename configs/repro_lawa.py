"""LAWA (Sanyal et al. 2023) at a high and a low constant learning rate, the experiment of
``cpt-jax reproduce --parts lawa``.

A tiny Pythia trains from scratch on the general mixture (books, legal, techdocs, science,
reference, equal shares) at a constant LR (after 1% warmup); online LAWA keeps the k = 5 latest
snapshots taken every nu = 4 steps, and every eval scores both the latest parameters
(``eval/``) and their average (``eval_lawa/``) on the same held-out batches.

    PYTHONPATH=. cpt-jax experiment --config configs/repro_lawa.py:full   # (or :tiny)
"""

from experiments.repro import settings

LRS = {"high": 1e-2, "low": 1e-3}


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/lawa")
    c.train.steps = settings.steps(size, 160, 6)
    c.train.eval_every = settings.steps(size, 20, 2)
    c.train.eval_batches = settings.steps(size, 2, 1)  # latest and LAWA are scored on the same batches
    c.data.domains = ",".join(settings.UPSTREAM)
    c.data.weights = settings.uniform(settings.UPSTREAM)
    c.data.upstream = ",".join(settings.UPSTREAM)
    c.schedule.name = "constant"
    c.lawa.k = settings.steps(size, 5, 2)
    c.lawa.every = settings.steps(size, 4, 1)
    return c


def get_runs(c):
    return [{"name": name, "set": {"optim.peak_lr": lr}} for name, lr in LRS.items()]
