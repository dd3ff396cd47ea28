"""Re-warming (Gupta et al. 2023): continue the shared cosine pretraining on code_python.

Every run starts from ``runs/repro/pretrain/cosine`` (``train.init_from``, set by
``experiments/repro/rewarm.py``; its cosine ended at eta_min = 0.1 eta_max), re-warms linearly from
that final LR (``schedule.start_lr``) to a new peak over W steps and decays by cosine to 0.1 x
the new peak over T steps, training on code_python only. Arms:

- ``w{W}_s{seed}``: peak = the pretraining peak, W = 0, 1, 2 steps (0, 1, 2% of T = 100), two
  data orders (``seed``) each: does the warmup length matter?
- ``peak0.5x``, ``peak2x``: the peak halved and doubled (W = 1%, seed 0): more learning, more
  forgetting?
- ``constant``: no re-warm, the pretraining's final LR held constant (Gupta et al.'s baseline).

``w1_s0`` (the 1x arm), the two peak arms and ``constant`` also evaluate densely early on
(``train.eval_steps``) to show the stability gap.

    PYTHONPATH=. cpt-jax experiment --config configs/repro_rewarm.py:full \\
        --config.train.init_from=runs/repro/pretrain/cosine   # (or :tiny)
"""

from experiments.repro import settings

WARMUPS = (0, 1, 2)  # W in steps (full size: % of the 100 continuation steps)
SEEDS = (0, 1)
PEAKS = (0.5, 2.0)  # x the pretraining peak, besides the 1x arms
DENSE_FULL = "1,2,3,4,6,8,12,16,24,32,48,64"  # early evals of the stability gap (full size)


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/rewarm")
    c.train.steps = settings.steps(size, 100)
    c.train.eval_every = 0  # final eval only, except on the dense arms
    domains = settings.UPSTREAM + (settings.DOMAIN_A,)
    c.data.domains = ",".join(domains)
    c.data.weights = f"{settings.DOMAIN_A}=1"
    c.data.upstream = ",".join(settings.UPSTREAM)
    c.data.downstream = settings.DOMAIN_A
    c.schedule.name = "cosine"
    c.schedule.start_lr = settings.FINAL_LR  # re-warm from where the pretraining ended
    c.schedule.min_lr_ratio = 0.1
    c.schedule.warmup_steps = 1
    return c


def dense_steps(c):
    return DENSE_FULL if c.train.steps >= 100 else "1,2"


def get_runs(c):
    dense = {"train.eval_steps": dense_steps(c)}
    runs = []
    for seed in SEEDS:
        for w in WARMUPS:
            extra = dense if (w, seed) == (1, 0) else {}
            runs.append({"name": f"w{w}_s{seed}", "set": {"schedule.warmup_steps": w, "seed": seed, **extra}})
    for x in PEAKS:
        runs.append({"name": f"peak{x:g}x", "set": {"optim.peak_lr": x * settings.PRETRAIN_LR, **dense}})
    runs.append({"name": "constant", "set": {"schedule.name": "constant", "optim.peak_lr": settings.FINAL_LR,
                                             "schedule.start_lr": 0.0, **dense}})
    return runs
