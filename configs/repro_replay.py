"""Replay and the infinite schedule (Ibrahim et al. 2024), continuing the shared pretraining.

Claim 1, ``rep<pct>_s<seed>``: from the cosine pretraining, S steps on code_python, re-warming
from the pretraining's final LR to its peak and re-decaying with a cosine, with 0 / 5 / 25% of the
sequences replayed from the upstream mixture (compute-equivalent: the replayed sequences replace
new ones). Every arm runs seeds 0, 1, 2 (data orders), so arms are compared seed by seed.

Claim 2, two successive new domains (code_python, then math):

- cosine chain: ``rep0_s<seed>`` (= stage A) -> ``cos_B_s<seed>`` (re-warm + cosine on math);
- infinite chain: the infinite pretraining (constant eta_const = 0.5 eta_max, never annealed) ->
  ``inf_A_s<seed>`` -> ``inf_B_s<seed>``, each held at eta_const without re-warming;
  ``inf_A_anneal_s<seed>`` and ``inf_B_anneal_s<seed>`` branch off the kept checkpoint
  ``S - N_ann`` steps into each stage and anneal eta_const -> eta_min over the last N_ann steps,
  so each annealed model has seen exactly the tokens of the cosine stage it is compared with.
  The next stage continues from the un-annealed end of the previous one. Each chain runs the
  same three seeds.

    PYTHONPATH=. cpt-jax experiment --config configs/repro_replay.py:full   # (after configs/repro_pretrain.py)
"""

import os

from experiments.repro import settings

SHARES = {"full": (0.0, 0.05, 0.25), "tiny": (0.0, 0.25), "gpu": (0.0, 0.05, 0.25)}
SEEDS = (0, 1, 2)


def stage_steps(size):
    """S, the steps of each continuation stage."""
    return settings.steps(size, 110, 4)


def anneal_steps(size):
    """N_ann, the anneal branch at the end of an infinite stage (~15% of S)."""
    return settings.steps(size, 16, 1)


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/replay")
    s = stage_steps(size)
    c.train.steps = s
    c.train.eval_every = s  # the step-0 eval of the continuation and the final one
    c.data.domains = settings.DOMAIN_A
    c.data.upstream = ",".join(settings.UPSTREAM)
    c.data.downstream = f"{settings.DOMAIN_A},{settings.DOMAIN_B}"
    c.schedule.start_lr = settings.FINAL_LR  # re-warm from where the pretraining's cosine ended
    c.schedule.warmup_steps = settings.steps(size, 5, 1)
    return c


def _size(c):
    return settings.size_of(c)


def _pct(f):
    return f"{100 * f:g}"


def arm_runs(c):
    """The claim-1 arms: (name, share, seed)."""
    out = []
    for f in SHARES[_size(c)]:
        for seed in SEEDS:
            out.append((f"rep{_pct(f)}_s{seed}", f, seed))
    return out


def get_runs(c):
    size = _size(c)
    s, n_ann = stage_steps(size), anneal_steps(size)
    pretrain = os.path.join(os.path.dirname(c.run_dir.rstrip("/")), "pretrain")
    runs = []
    for name, f, seed in arm_runs(c):
        keys = {"train.init_from": os.path.join(pretrain, "cosine"), "seed": seed}
        if f > 0:
            keys.update({"data.replay_domains": ",".join(settings.UPSTREAM),
                         "data.replay_weights": "uniform", "data.replay_fraction": f})
        runs.append({"name": name, "set": keys})
    mid = {"train.eval_every": s // 2}
    infinite = {"schedule.name": "infinite", "schedule.rewarm": False, "schedule.anneal_frac": 0.0,
                "schedule.const_lr_ratio": 0.5, "checkpoint.every": s - n_ann,
                "checkpoint.keep_steps": str(s - n_ann), **mid}
    on_b = {"data.domains": settings.DOMAIN_B}
    for seed in SEEDS:
        runs += [
            {"name": f"cos_B_s{seed}", "from": f"rep0_s{seed}", "set": {**on_b, **mid, "seed": seed}},
            {"name": f"inf_A_s{seed}", "set": {"train.init_from": os.path.join(pretrain, "infinite"),
                                               **infinite, "seed": seed}},
            {"name": f"inf_B_s{seed}", "from": f"inf_A_s{seed}", "set": {**infinite, **on_b, "seed": seed}},
        ]
        for stage, data in (("inf_A", {}), ("inf_B", on_b)):
            runs.append({"name": f"{stage}_anneal_s{seed}", "set": {
                **data, "train.init_from": os.path.join(c.run_dir, f"{stage}_s{seed}", "checkpoints", str(s - n_ann)),
                "train.steps": n_ann, "train.eval_every": n_ann,
                "seed": seed + len(SEEDS),  # other data windows than the stage's own last steps
                "schedule.name": "infinite", "schedule.rewarm": False, "schedule.anneal_frac": 1.0,
                "schedule.const_lr_ratio": 0.5}})
    return runs
