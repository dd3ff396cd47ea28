"""What every reproduction shares: the domains, the model, the batch and the two sizes.

``full`` is the CPU-scale setting of ``docs/reproductions.md`` (a d = 64, L = 2 Pythia with
Pythia's 50k vocabulary, 8 x 128 tokens per step); ``tiny`` is a few steps of a smaller model,
for the test that keeps the pipeline from rotting.
"""

from __future__ import annotations

import json
import os

from cpt_jax.config import ConfigDict, base
from cpt_jax.errors import UserError

SIZES = ("full", "tiny")
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
    """``full`` steps at full size, ``tiny`` in the test."""
    return full if check_size(size) == "full" else tiny


def uniform(domains: tuple[str, ...] | list[str]) -> str:
    """``data.weights`` text giving each domain the same share."""
    return ",".join(f"{d}={1 / len(domains):.6f}" for d in domains)


def base_config(size: str, run_dir: str) -> ConfigDict:
    """The model, batch, data and eval settings every reproduction starts from."""
    size = check_size(size)
    c = base()
    c.run_dir = run_dir
    c.model.vocab_size = 50304  # Pythia's tokenizer (50,277 ids) padded to a multiple of 128
    c.model.hidden_size = 64 if size == "full" else 16
    c.model.num_layers = 2 if size == "full" else 1
    c.model.num_heads = 4 if size == "full" else 2
    c.train.batch_size = 8 if size == "full" else 4
    c.train.seq_len = 128 if size == "full" else 32
    c.train.log_every = 25 if size == "full" else 2
    c.train.eval_batches = 4 if size == "full" else 1
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
