"""The reproductions' tokenizer: a small byte-level BPE trained on the corpus itself.

With Pythia's 50k vocabulary a CPU-sized model is mostly embedding rows (a d = 64, L = 2
Pythia: 98.5%), and it mostly learns token frequencies. ``retokenize`` trains a byte-level BPE
of ``vocab_size`` ids (``<|endoftext|>`` = 0, as in Pythia) on the *training* documents of every
domain of a ``cpt-jax corpus`` data dir and re-tokenizes each domain with it, keeping the same
documents on each side of the train / validation split (checked: same counts per domain).
The raw text goes where ``cpt-jax corpus`` keeps it (``DATA_DIR/_cache/raw/<domain>.jsonl.gz``),
so the vocabulary part can extend this tokenizer in turn.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable

from cpt_jax.data import readers
from cpt_jax.data.manifest import load_manifest, local_data_dir
from cpt_jax.data.tokenize import is_val_document, tokenize_domain
from cpt_jax.errors import UserError

VAL_FRACTIONS = (0.05, 0.2, 0.1, 0.02, 0.01, 0.03, 0.15, 0.25)  # corpus default first
TOKENIZER_FILE = "tokenizer.json"


def train_bpe(texts: list[str], vocab_size: int, path: Path) -> Path:
    """A byte-level BPE of ``vocab_size`` ids trained on ``texts`` (``<|endoftext|>`` = 0),
    written as ``tokenizer.json`` to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def val_fraction(domain: str, n_docs: int, n_val: int) -> float:
    """The hold-out fraction that puts ``n_val`` of documents ``0..n_docs-1`` in ``val``."""
    for f in VAL_FRACTIONS:
        picked = sum(is_val_document(i, domain, f) for i in range(n_docs))
        if picked == n_val or (picked == 0 and n_val == 1):
            return f
    raise UserError(f"{domain}: no known val fraction puts {n_val} of {n_docs} documents in val")


def split_fraction(entry: dict, domain: str) -> float:
    """The val fraction that split a domain's documents, from its manifest ``entry``."""
    return val_fraction(domain, entry["train_documents"] + entry["val_documents"], entry["val_documents"])


def raw_documents(data_dir: str | Path, domain: str) -> tuple[list[str], float]:
    """The documents a data dir's ``domain`` was tokenized from (its raw cache, in order) and
    the val fraction that split them."""
    entry = load_manifest(str(data_dir))["domains"].get(domain)
    if entry is None:
        raise UserError(f"{data_dir}: no domain {domain!r} (build it: cpt-jax corpus --out {data_dir})")
    n_docs = entry["train_documents"] + entry["val_documents"]
    raw = local_data_dir(str(data_dir)) / "_cache" / "raw" / f"{domain}.jsonl.gz"
    if not raw.is_file():
        raise UserError(f"{raw} not found: the data dir was not built by `cpt-jax corpus`")
    docs: list[str] = []
    for doc in readers.iter_documents(readers.expand_inputs([raw])):
        docs.append(doc)
        if len(docs) == n_docs:
            break
    if len(docs) != n_docs:
        raise UserError(f"{raw}: {len(docs)} documents, the manifest counts {n_docs}")
    return docs, split_fraction(entry, domain)


def write_jsonl(path: Path, docs: list[str]) -> None:
    """``docs`` as gzipped JSON lines ``{"text": ...}`` (written whole, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    tmp.replace(path)


def tokenize_like(raw: Path, domain: str, out: str | Path, tokenizer: str | Path, base: dict,
                  log: Callable[[str], None] = print) -> dict:
    """Tokenize ``raw`` (a domain's documents, in order) into ``out`` with ``tokenizer``, split
    like the base data's manifest ``entry`` ``base``; UserError when the split differs."""
    entry = tokenize_domain([raw], domain, out, tokenizer, val_fraction=split_fraction(base, domain),
                            workers=1, progress=False, log=log)
    for key in ("train_documents", "val_documents"):
        if entry[key] != base[key]:
            raise UserError(f"re-tokenized {domain}: {key} {entry[key]} != {base[key]} of the base data")
    return entry


def retokenize(data_dir: str, out: str | Path, vocab_size: int,
               log: Callable[[str], None] = print) -> str:
    """``data_dir``'s domains re-tokenized into ``out`` with a ``vocab_size`` BPE trained on
    their training documents; a finished ``out`` is returned as it is."""
    out = Path(out)
    base = load_manifest(data_dir)["domains"]
    manifest = out / "manifest.json"
    if manifest.is_file() and set(base) <= set(load_manifest(str(out))["domains"]):
        return str(out)
    corpus = {d: raw_documents(data_dir, d) for d in sorted(base)}
    training = [doc for d, (docs, frac) in corpus.items()
                for i, doc in enumerate(docs) if not is_val_document(i, d, frac)]
    tokenizer = out / TOKENIZER_FILE
    if not tokenizer.is_file():
        log(f"training a {vocab_size}-id byte-level BPE on {len(training):,} training documents")
        train_bpe(training, vocab_size, tokenizer)
    for domain, (docs, _) in corpus.items():
        raw = out / "_cache" / "raw" / f"{domain}.jsonl.gz"
        write_jsonl(raw, docs)
        tokenize_like(raw, domain, out, tokenizer, base[domain], log)
    return str(out)
