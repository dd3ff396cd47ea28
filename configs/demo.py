"""The demo: continual pretraining of a tiny Pythia on a real corpus, four ways (CPU, minutes).

Stage 1 pretrains on an "upstream" mixture (books and licence texts) with Pythia's schedule
(1% warmup, cosine to 0.1 x peak). Stage 2 continues on "downstream" Python code from that
checkpoint in four arms (Gupta et al. 2023; Ibrahim et al. 2024):

- ``constant``: no re-warming, the pretraining's final LR (0.1 x peak) held constant;
- ``rewarm_half``: re-warm to 0.5 x the pretraining peak, cosine re-decay;
- ``rewarm_full``: re-warm to the pretraining peak, cosine re-decay;
- ``rewarm_full_replay10``: as ``rewarm_full`` with 10% of every batch replayed from upstream.

Each arm's downstream loss measures learning and its upstream loss forgetting. Run it with
``cpt-jax experiment --config configs/demo.py`` after ``cpt-jax corpus --out data/demo
--domains books,legal,code_python``; ``--config.model.preset=410m`` and larger
``train.*`` values give the same experiment at GPU scale.
"""

from cpt_jax.config import base

PRETRAIN_LR = 3e-3
FINAL_LR = 0.1 * PRETRAIN_LR  # where Pythia's schedule ends: eta_min = 0.1 eta_max
UPSTREAM = "books=0.6,legal=0.4"


def get_config():
    c = base()
    c.run_dir = "runs/demo"
    c.model.vocab_size = 50304  # Pythia's tokenizer (50,277 ids) padded to a multiple of 128
    c.model.hidden_size = 64
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.max_position_embeddings = 2048
    c.train.steps = 250
    c.train.batch_size = 10  # 10% replay = exactly 1 sequence per batch
    c.train.seq_len = 128
    c.train.log_every = 25
    c.train.eval_every = 50
    c.train.eval_batches = 4
    c.optim.peak_lr = PRETRAIN_LR
    c.schedule.name = "cosine"
    c.schedule.warmup_frac = 0.01
    c.schedule.min_lr_ratio = 0.1
    c.checkpoint.every = 100
    c.data.source = "tokenized"
    c.data.dir = "data/demo"
    c.data.domains = "books,legal,code_python"
    c.data.weights = UPSTREAM
    c.data.upstream = "books,legal"
    c.data.downstream = "code_python"
    return c


def get_runs(c):
    cpt_steps = 150
    shared = {"train.steps": cpt_steps, "data.weights": "code_python=1"}
    rewarm = {"schedule.name": "cosine", "schedule.warmup_frac": 0.01,
              "schedule.start_lr": FINAL_LR, "schedule.min_lr_ratio": 0.1}
    return [
        {"name": "pretrain"},
        {"name": "constant", "from": "pretrain",
         "set": {**shared, "schedule.name": "constant", "optim.peak_lr": FINAL_LR}},
        {"name": "rewarm_half", "from": "pretrain",
         "set": {**shared, **rewarm, "optim.peak_lr": 0.5 * PRETRAIN_LR}},
        {"name": "rewarm_full", "from": "pretrain",
         "set": {**shared, **rewarm, "optim.peak_lr": PRETRAIN_LR}},
        {"name": "rewarm_full_replay10", "from": "pretrain",
         "set": {**shared, **rewarm, "optim.peak_lr": PRETRAIN_LR,
                 "data.replay_domains": "books,legal", "data.replay_fraction": 0.1}},
    ]
