"""The reproductions' corpus re-tokenized with a BPE trained on it: the same documents on each
side of the split, the text round-trips, every id fits the new vocabulary, a finished dir is
kept, and a data dir without its raw text is one clear error."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import repro_data
from cpt_jax.data.indexed import IndexedDataset
from cpt_jax.data.manifest import load_manifest
from cpt_jax.errors import UserError
from cpt_jax.data.tokenize import is_val_document
from experiments.repro import corpus_bpe, vocab_eval


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    base = repro_data.build(root)
    out = corpus_bpe.retokenize(str(base), root / "bpe300", 300, log=lambda line: None)
    return base, out


def test_same_documents_and_text_with_the_new_tokenizer(corpora):
    base, out = corpora
    old, new = load_manifest(str(base)), load_manifest(out)
    assert new["tokenizer"]["vocab_size"] == 300 and set(new["domains"]) == set(old["domains"])
    tok = json.loads((Path(out) / corpus_bpe.TOKENIZER_FILE).read_text())
    assert tok["model"]["vocab"]["<|endoftext|>"] == 0
    for domain, entry in old["domains"].items():
        got = new["domains"][domain]
        assert (got["train_documents"], got["val_documents"]) == (entry["train_documents"], entry["val_documents"])
        with gzip.open(base / "_cache" / "raw" / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as f:
            raw = [json.loads(line)["text"] for line in f]
        docs, frac = corpus_bpe.raw_documents(out, domain)
        assert docs == raw
        val = [d for i, d in enumerate(raw) if is_val_document(i, domain, frac)]
        assert vocab_eval.val_text(out, domain, Path(out) / corpus_bpe.TOKENIZER_FILE) == val
        train = IndexedDataset(Path(out) / domain / "train")
        ids = np.concatenate([np.asarray(train[i]) for i in range(len(train))])
        assert ids.max() < 300 and ids.min() >= 0
        # a smaller vocabulary spends more tokens on the same text
        assert got["train_tokens"] > entry["train_tokens"]


def test_finished_dir_is_kept(corpora):
    base, out = corpora
    manifest = Path(out) / "manifest.json"
    before = manifest.stat().st_mtime_ns
    assert corpus_bpe.retokenize(str(base), out, 300, log=lambda line: None) == out
    assert manifest.stat().st_mtime_ns == before


def test_missing_raw_text_is_one_line(corpora, tmp_path):
    base, _ = corpora
    copy = tmp_path / "data"
    shutil.copytree(base, copy)
    (copy / "_cache" / "raw" / "math.jsonl.gz").unlink()
    with pytest.raises(UserError, match=r"math\.jsonl\.gz not found"):
        corpus_bpe.retokenize(str(copy), tmp_path / "out", 300, log=lambda line: None)
