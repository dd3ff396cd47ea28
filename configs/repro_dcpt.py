"""D-CPT law reproduction (Que et al. 2024): fit on four model sizes, predict a larger one.

For each width d a base model is pretrained on the general mixture (the five upstream domains,
equal shares, Pythia's cosine); from it, continual pretraining runs mix Python code (the domain)
at ratio r with the general data (``(1 - r)`` split equally) for ``CPT_STEPS`` steps at a
constant learning rate after a short re-warm, evaluated at ``CPT_EVALS`` and at the end: each
evaluation is one ``(N, D, r)`` point of the law (D = steps x batch x seq_len CPT tokens, over
16x from the first eval to the last; N = non-embedding parameters). Every continuation runs
``SEEDS`` (data orders), and the law is refitted once per seed. ``experiments.repro.dcpt`` fits
the law on the ``fit`` widths, predicts the ``held`` width, and adds runs at the held-out width
at the ratio the law chooses (``extra_runs``) when it is not on the grid.

    PYTHONPATH=. cpt-jax experiment --config configs/repro_dcpt.py:full   # (or :tiny)
"""

from experiments.repro import settings

WIDTHS = {"full": {"fit": (32, 48, 64, 96), "held": 128}, "tiny": {"fit": (16, 24, 32), "held": 48},
          "gpu": {"fit": (128, 192, 256, 384), "held": 512}}
RATIOS = {"full": (0.1, 0.25, 0.5, 0.75, 0.9), "tiny": (0.25, 0.75), "gpu": (0.1, 0.25, 0.5, 0.75, 0.9)}
SEEDS = (0, 1, 2)
BASE_STEPS = {"full": 100, "tiny": 4, "gpu": 200}
CPT_STEPS = {"full": 32, "tiny": 4, "gpu": 64}
CPT_EVALS = {"full": "2,4,8,16", "tiny": "1,2,3", "gpu": "4,8,16,32"}  # with the end: D over 16x (4x tiny)
CPT_LR = 1e-3  # eta_max of the continuations (re-warmed from FINAL_LR over CPT_WARMUP steps)
CPT_WARMUP = {"full": 4, "tiny": 1, "gpu": 8}


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/dcpt")
    c.train.steps = BASE_STEPS[size]
    c.train.eval_every = 0  # the final evaluation only (bases); continuations add CPT_EVALS
    c.data.domains = ",".join(settings.UPSTREAM)
    c.data.weights = settings.uniform(settings.UPSTREAM)
    c.data.upstream = ",".join(settings.UPSTREAM)  # the general loss
    c.data.downstream = settings.DOMAIN_A  # the domain loss
    return c


def size_of(c):
    return settings.size_of(c)


def widths(c):
    w = WIDTHS[size_of(c)]
    return (*w["fit"], w["held"])


def weights(r):
    """``data.weights``: the domain at ratio r, the general domains sharing 1 - r equally."""
    general = ",".join(f"{d}={(1 - r) / len(settings.UPSTREAM):.6f}" for d in settings.UPSTREAM)
    return f"{settings.DOMAIN_A}={r:.6f},{general}"


def base_name(d):
    return f"base_d{d}"


def cpt_name(d, r, seed=0):
    return f"cpt_d{d}_r{r:.2f}_s{seed}"


def cpt_run(c, d, r, seed=0):
    """One continuation of the width-d base at domain ratio r."""
    size = size_of(c)
    return {"name": cpt_name(d, r, seed), "from": base_name(d), "set": {
        "model.hidden_size": d, "seed": seed,
        "train.steps": CPT_STEPS[size], "train.eval_steps": CPT_EVALS[size],
        "data.domains": ",".join((settings.DOMAIN_A, *settings.UPSTREAM)),
        "data.weights": weights(r),
        "optim.peak_lr": CPT_LR, "schedule.name": "wsd", "schedule.decay_frac": 0.0,
        "schedule.warmup_steps": CPT_WARMUP[size], "schedule.start_lr": settings.FINAL_LR}}


def get_runs(c):
    runs = [{"name": base_name(d), "set": {"model.hidden_size": d}} for d in widths(c)]
    runs += [cpt_run(c, d, r, s) for s in SEEDS for d in widths(c) for r in RATIOS[size_of(c)]]
    return runs


def extra_runs(c, ratios, seeds=SEEDS):
    """Continuations of the held-out width at ``ratios`` (the law's choice), one per seed."""
    held = WIDTHS[size_of(c)]["held"]
    return [cpt_run(c, held, r, s) for r in ratios for s in seeds]
