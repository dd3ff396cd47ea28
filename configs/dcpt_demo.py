"""D-CPT demo sweep (Que et al. 2024): model sizes x domain ratios x token budgets, on CPU.

For each width d a base model is pretrained on the general mixture (books + licence texts);
from it, continual pretraining runs mix Python code (the domain) at ratio r with the general
data for a budget of D tokens. ``cpt-jax sweep --config configs/dcpt_demo.py`` writes
``runs/dcpt_demo/results.csv`` (bases are the D = 0 rows: the pre-CPT general loss L_g0), then

    cpt-jax dcpt fit runs/dcpt_demo/results.csv --out runs/dcpt_demo/fit.json --plot ...
    cpt-jax dcpt ratio --fit runs/dcpt_demo/fit.json --N ... --D ... --tolerance 0.03

Needs ``cpt-jax corpus --out data/demo --domains books,legal,code_python``.
"""

from cpt_jax.config import base

WIDTHS = [32, 64, 96]
RATIOS = [0.2, 0.5, 0.8]
CPT_STEPS = [40, 80]
GENERAL = {"books": 0.6, "legal": 0.4}


def get_config():
    c = base()
    c.run_dir = "runs/dcpt_demo"
    c.model.vocab_size = 50304
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.train.batch_size = 8
    c.train.seq_len = 128
    c.train.log_every = 20
    c.train.eval_batches = 4
    c.train.progress = False
    c.optim.peak_lr = 3e-3
    c.schedule.name = "cosine"
    c.schedule.warmup_frac = 0.05
    c.checkpoint.every = 0
    c.data.source = "tokenized"
    c.data.dir = "data/demo"
    c.data.domains = "books,legal,code_python"
    c.data.upstream = "books,legal"  # the general loss
    c.data.downstream = "code_python"  # the domain loss
    return c


def get_grid(c):
    return {"d": WIDTHS, "r": RATIOS, "steps": CPT_STEPS}


def _weights(r: float) -> str:
    general = ",".join(f"{k}={(1 - r) * w:.4f}" for k, w in GENERAL.items())
    return f"code_python={r},{general}"


def base_run(p):
    return {"name": f"base_d{p['d']}",
            "set": {"model.hidden_size": p["d"], "train.steps": 150, "data.weights": _weights(0.0)}}


def apply(p):
    return {"model.hidden_size": p["d"], "train.steps": p["steps"], "data.weights": _weights(p["r"]),
            "schedule.start_lr": 3e-4, "optim.peak_lr": 1e-3}
