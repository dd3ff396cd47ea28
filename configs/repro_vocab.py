"""Vocabulary expansion (``cpt-jax reproduce --parts vocab``): continue the shared pretraining on
the math domain with Pythia's tokenizer (``base_s*``) and with that tokenizer extended by tokens
learnt from math's training documents (``extended_s*``), at the same steps x batch x T.

The part module (``experiments/repro/vocab.py``) runs ``cpt-jax vocab extend``, re-tokenizes math into
its own data dir and passes ``train.init_from`` (the pretraining for ``base``, the extended
checkpoint for ``extended``) and ``data.dir`` per arm.

    cpt-jax reproduce --parts vocab      # (or --size tiny)
"""

from experiments.repro import settings

DOMAIN = settings.DOMAIN_B  # math: 0.49 tokens per byte under Pythia's tokenizer (prose: 0.23-0.34)
NEW_TOKENS = {"full": 1000, "tiny": 40, "gpu": 1000}
SEEDS = (0, 1, 2)
ARMS = ("base", "extended")


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/vocab")
    c.train.steps = settings.steps(size, 100, 3)
    c.train.eval_every = settings.steps(size, 20, 3)
    c.data.domains = DOMAIN
    c.data.weights = f"{DOMAIN}=1.0"
    c.data.downstream = DOMAIN
    c.optim.peak_lr = settings.PRETRAIN_LR  # re-warm to the pretraining's peak
    c.schedule.start_lr = settings.FINAL_LR  # from where the pretraining ended
    c.schedule.warmup_steps = settings.steps(size, 5, 1)
    return c


def get_runs(c):
    return [{"name": f"{arm}_s{seed}", "set": {"seed": seed}} for arm in ARMS for seed in SEEDS]
