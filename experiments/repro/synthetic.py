"""A synthetic ten-domain corpus made on the machine (no downloads), for the reproductions'
tests and their accelerator-scale runs under ``bench/``.

Each domain has its own words (spelled from its own letters) plus words every domain shares,
and its own first-order Markov chain over them: word ``w_{t+1}`` is one of ``SUCCESSORS`` words
picked for ``w_t``, so a model can learn each domain, and the domains differ in what there is to
learn. Every ``long_every``-th document is long (for the long-context part). A byte-level BPE
tokenizer (``<|endoftext|>`` = id 0, as in Pythia) is trained on all of it, the raw text is kept
where ``cpt-jax corpus`` keeps it (``DATA_DIR/_cache/raw/<domain>.jsonl.gz``), and every domain is
tokenized with ``cpt-jax tokenize``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.repro.corpus_bpe import train_bpe
from experiments.repro.settings import ALL_DOMAINS

SHARED = ["the", "of", "and", "to", "in", "is", "for", "on", "with", "as",
          "ü", "ß", "日本", "→", "(", ")", "=", ":", ";", "."]
SUCCESSORS = 6


@dataclass(frozen=True)
class Shape:
    """How much text: documents per domain, their length in words, the BPE vocabulary."""

    docs: int
    words: tuple[int, int]  # a short document's word count, uniform in [lo, hi)
    long_words: int
    own_words: int
    vocab_size: int
    long_every: int = 6


SHAPES = {"tiny": Shape(24, (60, 300), 1200, 40, 400),
          "gpu": Shape(1500, (200, 1500), 6000, 600, 8192)}


def domain_words(domain: str, n: int) -> list[str]:
    """``n`` words of ``domain``: its first three letters and a base-26 suffix."""
    return [f"{domain[:3]}{chr(97 + i % 26)}{i // 26}" for i in range(n)]


def documents(domain: str, shape: Shape, rng: np.random.Generator) -> list[str]:
    """The domain's documents, sampled from its Markov chain (all documents step together)."""
    words = np.array(domain_words(domain, shape.own_words) + SHARED)
    successors = rng.integers(0, len(words), (len(words), SUCCESSORS))
    lengths = rng.integers(*shape.words, shape.docs)
    lengths[::shape.long_every] = shape.long_words
    state = rng.integers(0, len(words), shape.docs)
    seq = np.empty((shape.docs, int(lengths.max())), np.int64)
    for t in range(seq.shape[1]):
        seq[:, t] = state
        state = successors[state, rng.integers(0, SUCCESSORS, shape.docs)]
    return [" ".join(words[seq[i, :n]]) for i, n in enumerate(lengths)]


def build(root: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write the corpus of ``SHAPES[size]`` under ``root/data`` and return that DATA_DIR
    (a finished one is returned as it is)."""
    from cpt_jax.data.tokenize import tokenize_domain

    shape, data = SHAPES[size], Path(root) / "data"
    manifest = data / "manifest.json"
    if manifest.is_file() and set(ALL_DOMAINS) <= set(json.loads(manifest.read_text()).get("domains", {})):
        return data
    rng = np.random.default_rng(seed)
    texts = {d: documents(d, shape, rng) for d in ALL_DOMAINS}
    raw = data / "_cache" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    texts_all = [t for docs in texts.values() for t in docs]
    tokenizer = train_bpe(texts_all, shape.vocab_size, Path(root) / "tokenizer.json")
    for domain, docs in texts.items():
        path = raw / f"{domain}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in docs)
        tokenize_domain([path], domain, data, tokenizer, val_fraction=0.2, workers=1, progress=False,
                        log=lambda line: None)
    return data
