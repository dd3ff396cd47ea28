"""A miniature of the ten-domain corpus for the reproduction tests: each domain its own words,
a small byte-level BPE over all of them, tokenized shards, and the raw text where
`cpt-jax corpus` keeps it (``DATA_DIR/_cache/raw/<domain>.jsonl.gz``)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from conftest import save_bpe_tokenizer
from cpt_jax.cli import main
from experiments.repro.settings import ALL_DOMAINS


def _documents(domain: str, rng: np.random.RandomState, n_docs: int = 24) -> list[str]:
    """Documents from the domain's own 40 words plus 20 shared ones, some of them long."""
    own = [f"{domain[:3]}{chr(97 + i % 26)}{i // 26}" for i in range(40)]
    shared = ["the", "of", "and", "to", "in", "is", "for", "on", "with", "as",
              "ü", "ß", "日本", "→", "(", ")", "=", ":", ";", "."]
    words = own + shared
    docs = []
    for i in range(n_docs):
        n = 1200 if i % 6 == 0 else rng.randint(60, 300)
        docs.append(" ".join(words[j] for j in rng.randint(0, len(words), n)))
    return docs


def build(root: Path) -> Path:
    """Write the miniature corpus under ``root/data`` and return that DATA_DIR."""
    rng = np.random.RandomState(0)
    texts = {d: _documents(d, rng) for d in ALL_DOMAINS}
    data, raw = root / "data", root / "data" / "_cache" / "raw"
    raw.mkdir(parents=True)
    tokenizer = save_bpe_tokenizer(root / "tokenizer.json", [t for docs in texts.values() for t in docs], 400)
    for domain, docs in texts.items():
        path = raw / f"{domain}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in docs)
        code = main(["tokenize", "--input", str(path), "--domain", domain, "--out", str(data),
                     "--tokenizer", str(tokenizer), "--val-fraction", "0.2", "--workers", "1"])
        assert code == 0, domain
    return data
