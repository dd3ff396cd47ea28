"""Long-context continuation (Fu et al. 2024), tiny and on CPU: pretrain at T = 128, continue at T = 512.

Run 1 (``pretrain_128``) trains a tiny Pythia at ``train.seq_len = 128`` with Pythia's rotary base
10000 and ``model.max_position_embeddings = 128``. Run 2 (``long_512``) continues from its params
at ``train.seq_len = 512`` with ``max_position_embeddings = 512`` and a raised rotary base.

The base follows the NTK-aware rule ``b' = b * s**(r / (r - 2))`` for a length factor s = 4 and
r = 4 rotary dims (head size 16 x rotary_pct 0.25): 10000 -> 160000, which makes the slowest
rotary frequency turn as far over 512 positions as it did over 128. Position interpolation is the
alternative: ``"model.rope_scaling": 4.0`` in place of the base change.

Data: the synthetic ``pattern`` domain by default (documents of 32..512 tokens; no up-sampling,
the filter would only thin out short documents). With the real corpus
(``--config.data.source=tokenized --config.data.dir=data/demo`` after ``cpt-jax corpus``) both
runs use Pythia's vocabulary and the continuation up-samples long documents: every document of
>= 1024 tokens is kept, shorter ones with p = 0.1, each domain keeping its token share.

    cpt-jax experiment --config configs/long_context.py
"""

from cpt_jax.config import base

SHORT, LONG = 128, 512
LONG_BASE = 160000.0  # 10000 * (512 / 128) ** (4 / (4 - 2))


def get_config():
    c = base()
    c.run_dir = "runs/long_context"
    c.model.vocab_size = 512
    c.model.hidden_size = 64
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.max_position_embeddings = SHORT
    c.model.attention = "auto"  # xla at T <= attention_chunk, chunked above it (cuDNN on GPU, bf16)
    c.model.attention_chunk = 128
    c.train.steps = 300
    c.train.batch_size = 16
    c.train.seq_len = SHORT
    c.train.log_every = 25
    c.train.eval_batches = 2
    c.optim.peak_lr = 3e-3
    c.schedule.name = "cosine"
    c.schedule.warmup_frac = 0.02
    c.data.source = "synthetic"
    c.data.domains = "pattern"
    return c


def get_runs(c):
    long_set = {
        "train.seq_len": LONG,
        "train.batch_size": max(1, c.train.batch_size * SHORT // LONG),  # same tokens per step
        "train.steps": c.train.steps // 2,
        "model.max_position_embeddings": LONG,
        "model.rotary_emb_base": LONG_BASE,
        "optim.peak_lr": 2e-3,
        "schedule.start_lr": 0.1 * c.optim.peak_lr,  # re-warm from the pretraining's final LR
    }
    short_set = {}
    if c.data.source == "tokenized":
        short_set = {"model.vocab_size": 50304, "data.domains": "books,legal,code_python"}
        long_set.update(short_set)
        long_set.update({"data.long_threshold": 1024, "data.long_keep": 0.1})
    return [
        {"name": "pretrain_128", "set": short_set},
        {"name": "long_512", "from": "pretrain_128", "set": long_set},
    ]
