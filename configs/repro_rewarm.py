"""Re-warming (Gupta et al. 2023): continue the shared cosine pretraining on code_python.

Every run starts from ``runs/repro/pretrain/cosine`` (``train.init_from``, set by
``experiments/repro/rewarm.py``; its cosine ended at eta_min = 0.1 eta_max), re-warms linearly from
that final LR (``schedule.start_lr``) to a new peak over W steps and decays by cosine to 0.1 x
the new peak over T = 200 steps, training on code_python only. Every arm runs the same three data
orders (``seed``), so arms are compared seed by seed:

- ``w{W}_s{seed}``: peak = the pretraining peak, W = 0.5, 1, 2, 5% of T (1, 2, 4, 10 steps):
  does the warmup length matter?
- ``peak0.5x_s{seed}``, ``peak2x_s{seed}``: the peak halved and doubled (W = 1%): more learning,
  more forgetting?
- ``constant_s{seed}``: no re-warm, the pretraining's final LR held constant (Gupta et al.'s
  baseline).

The 1% arms, the peak arms and ``constant`` also evaluate densely early on
(``train.eval_steps``) to show the stability gap on every seed.

    PYTHONPATH=. cpt-jax experiment --config configs/repro_rewarm.py:full \\
        --config.train.init_from=runs/repro/pretrain/cosine   # (or :tiny)
"""

from experiments.repro import settings

WARMUP_FRACS = (0.005, 0.01, 0.02, 0.05)  # W / T
REFERENCE_FRAC = 0.01  # the W of the peak, constant and dense arms
SEEDS = (0, 1, 2)
PEAKS = (0.5, 2.0)  # x the pretraining peak, besides the 1x arms
DENSE_FULL = "1,2,3,4,5,6,8,10,12,16,20,24,32,40,48,64,96,128"  # early evals of the stability gap


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/rewarm")
    c.train.steps = settings.steps(size, 200)
    c.train.eval_every = 0  # final eval only, except on the dense arms
    domains = settings.UPSTREAM + (settings.DOMAIN_A,)
    c.data.domains = ",".join(domains)
    c.data.weights = f"{settings.DOMAIN_A}=1"
    c.data.upstream = ",".join(settings.UPSTREAM)
    c.data.downstream = settings.DOMAIN_A
    c.schedule.name = "cosine"
    c.schedule.start_lr = settings.FINAL_LR  # re-warm from where the pretraining ended
    c.schedule.min_lr_ratio = 0.1
    c.schedule.warmup_steps = warmup_steps(c.train.steps, REFERENCE_FRAC)
    return c


def warmup_steps(steps, frac):
    """W = frac x T steps, at least 1 for a nonzero fraction."""
    return max(1, round(frac * steps))


def warmups(c):
    """The W of the warmup arms: the WARMUP_FRACS of T (at the tiny size, where they round
    together, W = 1 and 2 steps)."""
    ws = sorted({warmup_steps(c.train.steps, f) for f in WARMUP_FRACS})
    return ws if len(ws) == len(WARMUP_FRACS) else [1, 2]


def dense_steps(c):
    return DENSE_FULL if c.train.steps >= 200 else "1,2"


def get_runs(c):
    dense = {"train.eval_steps": dense_steps(c)}
    ref = warmup_steps(c.train.steps, REFERENCE_FRAC)
    runs = []
    for seed in SEEDS:
        for w in warmups(c):
            extra = dense if w == ref else {}
            runs.append({"name": f"w{w}_s{seed}", "set": {"schedule.warmup_steps": w, "seed": seed, **extra}})
        for x in PEAKS:
            runs.append({"name": f"peak{x:g}x_s{seed}",
                         "set": {"optim.peak_lr": x * settings.PRETRAIN_LR, "seed": seed, **dense}})
        runs.append({"name": f"constant_s{seed}", "set": {
            "schedule.name": "constant", "optim.peak_lr": settings.FINAL_LR, "schedule.start_lr": 0.0,
            "seed": seed, **dense}})
    return runs
