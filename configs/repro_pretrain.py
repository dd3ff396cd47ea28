"""The pretraining every reproduction continues from (``cpt-jax reproduce`` trains it once).

A tiny Pythia on the "general" mixture (books, legal, techdocs, science, reference, equal
shares) with two schedules:

- ``cosine``: Pythia's schedule (1% warmup to eta_max, cosine to 0.1 eta_max), the start of the
  re-warming, replay, vocabulary and long-context continuations;
- ``infinite``: Ibrahim et al.'s infinite schedule (warmup, cooldown to eta_const = 0.5 eta_max,
  then constant, no anneal), from which later tasks continue without re-warming.

    PYTHONPATH=. cpt-jax experiment --config configs/repro_pretrain.py:full   # (or :tiny)
"""

from experiments.repro import settings


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/pretrain")
    c.train.steps = settings.steps(size, 600)
    c.train.eval_every = settings.steps(size, 100, 2)
    c.data.domains = ",".join(settings.UPSTREAM)
    c.data.weights = settings.uniform(settings.UPSTREAM)
    c.data.upstream = ",".join(settings.UPSTREAM)
    return c


def get_runs(c):
    return [
        {"name": "cosine"},
        {"name": "infinite", "set": {"schedule.name": "infinite", "schedule.cooldown_frac": 0.2,
                                     "schedule.const_lr_ratio": 0.5, "schedule.anneal_frac": 0.0}},
    ]
