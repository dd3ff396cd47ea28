"""What every reproduction shares: the domains, the model, the batch and the three sizes.

``full`` is the CPU-scale setting of ``docs/reproductions.md`` (a d = 128, L = 6 Pythia with a
4k byte-level BPE trained on the corpus, ``corpus_bpe``: 53% of its parameters in the transformer,
8 x 128 tokens per step); ``tiny`` is a few steps of a smaller model,
for the test that keeps the pipeline from rotting; ``gpu`` is Pythia-70m's shape (d = 512,
L = 6, 8 heads), 16 x 512 tokens per step and ``GPU_STEPS`` x the full size's steps, for one
accelerator (``bench/repro_part.py``).
"""

from __future__ import annotations

import json
import os

from cpt_jax.config import ConfigDict, base
from cpt_jax.errors import UserError

SIZES = ("full", "tiny", "gpu")
LAYERS = {"full": 6, "tiny": 1, "gpu": 6}
HEADS = {"full": 4, "tiny": 2, "gpu": 8}  # also how a config tells its size
BPE_VOCAB = {"full": 4096, "tiny": None, "gpu": None}  # the corpus re-tokenized (gpu, tiny: synthetic)
GPU_STEPS = 2
UPSTREAM = ("books", "legal", "techdocs", "science", "reference")  # the "general" pretraining data
DOMAIN_A = "code_python"  # the first new domain of a continuation
DOMAIN_B = "math"  # the second, for two successive continuations
ALL_DOMAINS = UPSTREAM + (DOMAIN_A, DOMAIN_B, "code_c", "code_go", "code_rust")
PRETRAIN_LR = 3e-3  # eta_max of the pretraining runs
FINAL_LR = 0.1 * PRETRAIN_LR  # where Pythia's cosine ends: eta_min = 0.1 eta_max


def check_size(size: str | None) -> str:
    size = size or "full"
    if size not in SIZES:
        raise UserError(f"reproduction size must be one of {', '.join(SIZES)}, got {size!r}")
    return size


def steps(size: str, full: int, tiny: int = 4) -> int:
    """``full`` steps at full size, ``tiny`` in the test, ``GPU_STEPS x full`` at the gpu size."""
    size = check_size(size)
    return {"full": full, "tiny": tiny, "gpu": GPU_STEPS * full}[size]


def size_of(c: ConfigDict) -> str:
    """The size a config was made at (from its number of heads)."""
    return next(k for k, n in HEADS.items() if n == int(c.model.num_heads))


def uniform(domains: tuple[str, ...] | list[str]) -> str:
    """``data.weights`` text giving each domain the same share."""
    return ",".join(f"{d}={1 / len(domains):.6f}" for d in domains)


def base_config(size: str, run_dir: str) -> ConfigDict:
    """The model, batch, data and eval settings every reproduction starts from."""
    size = check_size(size)
    c = base()
    c.run_dir = run_dir
    c.model.vocab_size = 50304  # Pythia's tokenizer padded; the data dir's tokenizer sets it (Context)
    pick = lambda full, tiny, gpu: {"full": full, "tiny": tiny, "gpu": gpu}[size]  # noqa: E731
    c.model.hidden_size = pick(128, 16, 512)
    c.model.num_layers = LAYERS[size]
    c.model.num_heads = HEADS[size]
    c.train.batch_size = pick(8, 4, 16)
    c.train.seq_len = pick(128, 32, 512)
    c.train.log_every = pick(25, 2, 50)
    c.train.eval_batches = pick(4, 1, 8)
    c.train.progress = False
    c.optim.peak_lr = PRETRAIN_LR
    c.schedule.name = "cosine"
    c.schedule.warmup_frac = 0.01
    c.schedule.min_lr_ratio = 0.1
    c.checkpoint.every = 0
    c.checkpoint.keep = 1
    c.data.source = "tokenized"
    c.data.dir = "data/ten"
    c.logging.tensorboard = False
    return c


def vocab_rows(data_dir: str) -> int:
    """Embedding rows for the tokenizer a data dir was made with: its ids padded to a multiple of 128."""
    path = os.path.join(data_dir, "manifest.json")
    try:
        with open(path) as f:
            ids = int(json.load(f)["tokenizer"]["vocab_size"])
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: no tokenizer vocab_size ({err}); build the data with `cpt-jax corpus`") from None
    return -(-ids // 128) * 128
