"""A miniature of the ten-domain corpus for the reproduction tests: the synthetic corpus of
``experiments.repro.synthetic`` at its tiny shape (each domain its own words and Markov chain,
a small byte-level BPE, tokenized shards, and the raw text where `cpt-jax corpus` keeps it)."""

from __future__ import annotations

from pathlib import Path

from experiments.repro import synthetic


def build(root: Path) -> Path:
    """Write the miniature corpus under ``root/data`` and return that DATA_DIR."""
    return synthetic.build(root, "tiny")
