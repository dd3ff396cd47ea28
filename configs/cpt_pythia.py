"""Continue pretraining a Hugging Face Pythia on your own tokenized domains: re-warm + replay.

The recipe of the README ("Continue pretraining a Hugging Face Pythia")::

    cpt-jax convert --from-hf path/to/pythia-410m --to ckpt/pythia-410m
    cpt-jax tokenize --input my_domain/*.jsonl --domain mydomain --out data/mine --tokenizer path/to/pythia-410m
    cpt-jax tokenize --input general/*.jsonl --domain general --out data/mine --tokenizer path/to/pythia-410m
    cpt-jax train --config=configs/cpt_pythia.py:410m --config.run_dir=runs/pythia-410m-mine \\
        --config.train.init_from=ckpt/pythia-410m --config.data.dir=data/mine \\
        --config.data.domains=mydomain --config.data.replay_domains=general \\
        --config.data.downstream=mydomain --config.data.upstream=general

- the model's shape comes from the checkpoint's ``model.json`` (``model.from_checkpoint``), so
  any GPT-NeoX converted with ``cpt-jax convert`` works without copying its sizes;
- the optional config argument (``:410m``) names the Pythia size whose peak LR is used (Pythia's
  own, from ``cpt_jax.model.presets``; default 410m's 3e-4);
- the schedule re-warms from Pythia's final LR (0.1 x peak) to the peak over 1% of the steps and
  re-decays with a cosine to 0.1 x peak (Gupta et al. 2023, Ibrahim et al. 2024);
- 5% of every batch is replayed from ``data.replay_domains`` (old data, to limit forgetting);
  the loss on ``data.upstream`` measures forgetting and that on ``data.downstream`` learning
  (progress lines, report);
- the held-out loss is evaluated at step 0 (the starting point) and every ``train.eval_every``.
"""

from cpt_jax.config import base
from cpt_jax.model.presets import PRESETS


def get_config(size: str | None = None):
    size = size or "410m"
    if size not in PRESETS:
        raise ValueError(f"configs/cpt_pythia.py:{size}: not a Pythia size ({', '.join(PRESETS)})")
    peak = PRESETS[size].peak_lr
    c = base()
    c.run_dir = f"runs/cpt_pythia_{size}"
    c.model.from_checkpoint = "train.init_from"  # shape of the converted checkpoint
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "bfloat16"
    c.train.steps = 2000
    c.train.batch_size = 64
    c.train.seq_len = 2048
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.eval_batches = 8
    c.optim.peak_lr = peak
    c.schedule.name = "cosine"
    c.schedule.start_lr = 0.1 * peak  # where Pythia's own schedule ended
    c.schedule.warmup_frac = 0.01
    c.schedule.min_lr_ratio = 0.1
    c.data.source = "tokenized"
    c.data.replay_fraction = 0.05
    c.checkpoint.every = 500
    return c
