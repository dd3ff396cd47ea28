"""Long-context continuation (``cpt-jax reproduce --parts long_context``), Fu et al. 2024 style.

The shared pretraining (T = 128 at full size) continues on the general mixture (five domains,
equal shares) with long documents up-sampled: documents shorter than 2 x the new length are kept
with p = 0.1 (``data.long_threshold``, ``data.long_keep``), longer ones always.

- ``long_s<seed>``: T x 4 (512) with the rotary base raised by the NTK-aware rule
  ``b' = b * s**(r / (r - 2))`` (s = 4, r rotary dims per head: 10000 -> 160000 for r = 4),
  ``model.max_position_embeddings`` = 4 T, batch / 4 (the same tokens per step);
- ``control_s<seed>``: the same continuation at the old T and base.

Both run seeds 0, 1, 2 (data orders), so long and control are compared seed by seed.

The part module passes ``train.init_from`` (the pretraining) and evaluates per-position loss.

    cpt-jax reproduce --parts long_context      # (or --size tiny)
"""

from experiments.repro import settings

FACTOR = 4  # s: the new context over the pretraining's
SEEDS = (0, 1, 2)


def ntk_base(base, rotary_dims, factor):
    """``b * s**(r / (r - 2))``; with r <= 2 (one frequency, inv_freq = 1) the base has no effect."""
    return base * factor ** (rotary_dims / (rotary_dims - 2)) if rotary_dims > 2 else base


def rotary_dims(c):
    return int(c.model.hidden_size // c.model.num_heads * c.model.rotary_pct)


def get_config(size="full"):
    c = settings.base_config(size, "runs/repro/long_context")
    c.train.steps = settings.steps(size, 150, 3)
    c.train.log_every = settings.steps(size, 25, 1)
    c.data.domains = ",".join(settings.UPSTREAM)
    c.data.weights = settings.uniform(settings.UPSTREAM)
    c.data.upstream = ",".join(settings.UPSTREAM)
    c.data.long_threshold = 2 * FACTOR * c.train.seq_len
    c.data.long_keep = 0.1
    c.model.max_position_embeddings = c.train.seq_len
    c.optim.peak_lr = settings.PRETRAIN_LR / 3
    c.schedule.start_lr = settings.FINAL_LR  # re-warm from where the pretraining ended
    c.schedule.warmup_steps = settings.steps(size, 8, 1)
    return c


def get_runs(c):
    long_t = FACTOR * c.train.seq_len
    long = {"train.seq_len": long_t, "train.batch_size": max(1, c.train.batch_size // FACTOR),
            "model.max_position_embeddings": long_t,
            "model.rotary_emb_base": ntk_base(c.model.rotary_emb_base, rotary_dims(c), FACTOR)}
    runs = []
    for seed in SEEDS:
        runs += [{"name": f"long_s{seed}", "set": {**long, "seed": seed}},
                 {"name": f"control_s{seed}", "set": {"seed": seed}}]
    return runs
