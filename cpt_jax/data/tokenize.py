"""Tokenize one domain's raw text into ``DATA_DIR/<domain>/{train,val}.{bin,idx}``.

As GPT-NeoX prepares the Pile: each document is encoded without special tokens and gets EOS
(id 0 for Pythia) appended; documents are stored one per sequence. Worker processes encode
chunks of documents; results are written in input order, so the output does not depend on
the number of workers.

Validation hold-out is by document and deterministic: document ``i`` (0-based, counting the
non-empty documents of the inputs in order) goes to ``val`` when
``blake2b(f"{domain}/{i}") / 2**64 < val_fraction``. When that picks no document at all, the
last document goes to ``val`` so a small domain still has something to evaluate on; a domain
of one document has no validation split, and a line says so.

Input without a single non-empty document is refused before anything is written. Bytes that
are not UTF-8 are replaced by U+FFFD and counted in a warning line (``strict=True`` refuses
them); documents longer than ``readers.DOC_CHARS`` characters are tokenized in pieces.

Re-running with the same inputs (by content), tokenizer and options is a no-op: the manifest
records a fingerprint of all of them. Every run (re)writes ``DATA_DIR/token_bytes.npy``, the
UTF-8 bytes of each token id, from which evaluation reports bits per byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from cpt_jax.data import manifest as mf
from cpt_jax.data.indexed import IndexedDataset, IndexedDatasetWriter, dtype_for_vocab
from cpt_jax.data.manifest import load_manifest  # noqa: F401  (re-exported for callers)
from cpt_jax.data.readers import ReadStats, expand_inputs, input_kind, iter_documents
from cpt_jax.data.tokenizer import PYTHIA_TOKENIZER_NAME, fetch_assets, file_sha256, load_tokenizer
from cpt_jax.errors import UserError

FINGERPRINT_VERSION = "cpt-jax-tokenize-1"
_CHUNK_CHARS = 1 << 20  # about 1 MB of text per worker task
_CHUNK_DOCS = 2048


TOKEN_BYTES = "token_bytes.npy"  # DATA_DIR/token_bytes.npy: UTF-8 bytes of each token id


def token_byte_lengths(tok: Any, eos_id: int | None = None) -> np.ndarray:
    """UTF-8 bytes each token id stands for (int32 ``[V]``), for bits per byte.

    Byte-level BPE (Pythia's): a vocabulary entry's characters are its bytes, one each, so the
    bytes of any token sequence are the sum over its ids, exactly. Added tokens count the UTF-8
    bytes of their text; special tokens (EOS, padding) count 0. Other tokenizers: the bytes of
    each id decoded alone (an approximation where decoding joins tokens with spaces). The EOS
    that tokenizing appends to every document is not text: ``eos_id`` counts 0."""
    spec = json.loads(tok.to_str())
    byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    out = np.zeros(tok.get_vocab_size(with_added_tokens=True), np.int32)
    for i in range(len(out)):
        if i in added:
            out[i] = 0 if added[i].get("special") else len(added[i]["content"].encode("utf-8"))
        elif byte_level:
            out[i] = len(tok.id_to_token(i) or "")
        else:
            out[i] = len(tok.decode([i], skip_special_tokens=False).encode("utf-8"))
    if eos_id is not None:
        out[eos_id] = 0
    return out


def write_token_bytes(data_dir: str | os.PathLike, tok: Any, eos_id: int | None = None) -> Path:
    """Write ``DATA_DIR/token_bytes.npy`` (see :func:`token_byte_lengths`)."""
    path = Path(data_dir) / TOKEN_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, token_byte_lengths(tok, eos_id))
    os.replace(tmp, path)
    return path


def load_token_bytes(data_dir: str | os.PathLike) -> np.ndarray | None:
    """``DATA_DIR/token_bytes.npy`` as int64 ``[V]``; None when the data dir has none."""
    path = Path(data_dir) / TOKEN_BYTES
    return np.load(path).astype(np.int64) if path.is_file() else None


def is_val_document(index: int, domain: str, val_fraction: float) -> bool:
    """Deterministic hold-out: hash of (domain, document index) below ``val_fraction``."""
    digest = hashlib.blake2b(f"{domain}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_fingerprint(paths: list[Path], tokenizer_sha256: str, options: dict) -> str:
    """Hash of the inputs' contents (in order), the tokenizer and the options that shape output."""
    h = hashlib.sha256(FINGERPRINT_VERSION.encode())
    h.update(tokenizer_sha256.encode())
    h.update(repr(sorted(options.items())).encode())
    for p in paths:
        h.update(f"\0{input_kind(p)}:{file_digest(p)}".encode())
    return h.hexdigest()


# ---- worker side ---------------------------------------------------------------------------

_TOKENIZER = None
_EOS = 0


def _init_worker(tokenizer_path: str, eos_id: int, single_thread: bool) -> None:
    global _TOKENIZER, _EOS
    if single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"

    _TOKENIZER, _EOS = load_tokenizer(tokenizer_path), eos_id


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Token ids of the documents, each followed by EOS, concatenated; per-doc lengths; bytes."""
    encs = _TOKENIZER.encode_batch(texts, add_special_tokens=False)
    ids = [np.asarray(e.ids + [_EOS], dtype=np.int32) for e in encs]
    lengths = np.asarray([len(a) for a in ids], dtype=np.int64)
    nbytes = [len(t.encode("utf-8", errors="replace")) for t in texts]
    return (np.concatenate(ids) if ids else np.zeros(0, np.int32)), lengths, nbytes


def _chunks(docs: Iterator[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc)
        if chars >= _CHUNK_CHARS or len(chunk) >= _CHUNK_DOCS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _encoded_documents(
    chunks: Iterator[list[str]], tokenizer_path: str, eos_id: int, workers: int
) -> Iterator[tuple[np.ndarray, int]]:
    """(token array, text bytes) of every document in input order; <= 2 x workers chunks in flight."""
    if workers <= 1:
        _init_worker(tokenizer_path, eos_id, single_thread=False)
        results: Iterable = map(_encode_chunk, chunks)
    else:
        ctx = mp.get_context("spawn")  # no fork of a process that may hold threads
        pool = ctx.Pool(workers, _init_worker, (tokenizer_path, eos_id, True))
        results = _ordered(pool, chunks, 2 * workers)
    try:
        for flat, lengths, nbytes in results:
            if len(lengths):
                yield from zip(np.split(flat, np.cumsum(lengths)[:-1]), nbytes)
    finally:
        if workers > 1:
            pool.terminate()
            pool.join()


def _ordered(pool, chunks: Iterator[list[str]], window: int) -> Iterator:
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_encode_chunk, (chunk,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# ---- driver --------------------------------------------------------------------------------


class _Progress:
    def __init__(self, domain: str, enabled: bool):
        self.domain, self.enabled, self.bytes = domain, enabled, 0
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, tokens: int, docs: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < (0.5 if self.tty else 10.0)):
            return
        self.last = now
        mb = self.bytes / 1e6
        line = (f"tokenize {self.domain}: {mb:,.1f} MB, {docs:,} docs, {tokens:,} tokens, "
                f"{mb / max(now - self.start, 1e-9):.2f} MB/s")
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def _up_to_date(data_dir: Path, domain: str, fingerprint: str, tokenizer: dict) -> dict | None:
    if not mf.manifest_path(data_dir).exists():
        return None
    manifest = load_manifest(data_dir)
    entry = manifest["domains"].get(domain)
    if not entry or entry.get("fingerprint") != fingerprint:
        return None
    if manifest["tokenizer"]["sha256"] != tokenizer["sha256"]:
        return None
    try:
        for split in ("train", "val"):
            ds = IndexedDataset(data_dir / entry[split])
            if (ds.num_tokens, len(ds)) != (entry[f"{split}_tokens"], entry[f"{split}_documents"]):
                return None
    except UserError:
        return None
    return entry


def _check_options(domain: str, val_fraction: float, workers: int, max_tokens: int | None) -> None:
    mf.check_domain_name(domain)
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    if max_tokens is not None and max_tokens <= 0:
        raise UserError(f"max_tokens must be positive, got {max_tokens}")


def _tokenizer(path: str | os.PathLike | None, name: str | None, eos_id: int | None,
               log: Callable[[str], None]) -> tuple[Any, Path, int, dict]:
    """``(tokenizer, its tokenizer.json, EOS id, manifest record)``; Pythia's when ``path`` is None."""
    if path is None:
        path = fetch_assets(log=log).tokenizer
        name = name or PYTHIA_TOKENIZER_NAME
    path = Path(path)
    tok = load_tokenizer(path)
    path = path / "tokenizer.json" if path.is_dir() else path
    if eos_id is None:
        eos_id = tok.token_to_id("<|endoftext|>")
        if eos_id is None:
            raise UserError(f"{path}: no <|endoftext|> token; pass the EOS id explicitly")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if not 0 <= eos_id < vocab:
        raise UserError(f"EOS id {eos_id} is not a token of {path} (ids 0..{vocab - 1})")
    record = {"name": name or os.fspath(path), "sha256": file_sha256(path), "vocab_size": vocab}
    return tok, path, eos_id, record


def _write_splits(docs: Any, folder: Path, dtype: Any, domain: str, val_fraction: float,
                  max_tokens: int | None, bar: _Progress) -> tuple[IndexedDatasetWriter, IndexedDatasetWriter]:
    """Write the encoded ``docs`` into ``folder/{train,val}`` (document i to val when
    ``is_val_document``; the last one to val if val would otherwise stay empty), stopping after
    the document that reaches ``max_tokens``; returns the closed writers."""
    with IndexedDatasetWriter(folder / "train", dtype) as train, \
            IndexedDatasetWriter(folder / "val", dtype) as val:
        pending: tuple[int, np.ndarray] | None = None  # one document of look-ahead
        try:
            for i, (ids, nbytes) in enumerate(docs):
                if pending is not None:
                    j, prev = pending
                    (val if is_val_document(j, domain, val_fraction) else train).add_document(prev)
                pending = (i, ids)
                bar.bytes += nbytes
                total = train.num_tokens + val.num_tokens + len(ids)
                bar.update(total, i + 1)
                if max_tokens is not None and total >= max_tokens:
                    break
        finally:
            docs.close()  # stops the worker pool, also on an early break or an error
        if pending is not None:
            j, last = pending
            to_val = is_val_document(j, domain, val_fraction) or (
                val_fraction > 0 and val.num_documents == 0 and train.num_documents > 0)
            (val if to_val else train).add_document(last)
        bar.update(train.num_tokens + val.num_tokens, train.num_documents + val.num_documents, True)
    return train, val


def tokenize_domain(
    inputs: list[str | os.PathLike],
    domain: str,
    data_dir: str | os.PathLike,
    tokenizer_path: str | os.PathLike | None = None,
    *,
    text_field: str = "text",
    doc_sep: str | None = None,
    val_fraction: float = 0.01,
    workers: int = 1,
    max_tokens: int | None = None,
    eos_id: int | None = None,
    sources: list[dict] | None = None,
    license: str = "unknown",
    tokenizer_name: str | None = None,
    progress: bool = True,
    strict: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Tokenize ``inputs`` into ``data_dir/<domain>/{train,val}`` and record it in the manifest.

    ``max_tokens`` stops after the document that reaches that many tokens (train + val).
    ``strict`` refuses input that is not valid UTF-8. Returns the domain's manifest entry.
    """
    _check_options(domain, val_fraction, workers, max_tokens)
    paths = expand_inputs(list(inputs))
    tok, tokenizer_path, eos_id, tokenizer = _tokenizer(tokenizer_path, tokenizer_name, eos_id, log)
    options = {"text_field": text_field, "doc_sep": doc_sep, "val_fraction": val_fraction,
               "max_tokens": max_tokens, "eos_id": eos_id, "domain": domain}
    fingerprint = input_fingerprint(paths, tokenizer["sha256"], options)
    data_dir = Path(data_dir)
    entry = _up_to_date(data_dir, domain, fingerprint, tokenizer)
    if entry is not None:
        log(f"tokenize {domain}: up to date ({entry['train_tokens']:,} train tokens)")
        write_token_bytes(data_dir, tok, eos_id)  # also for data dirs tokenized before it existed
        return entry

    stats = ReadStats()
    texts = iter_documents(paths, text_field, doc_sep, strict=strict, stats=stats)
    first = next(texts, None)  # refuse empty input before anything is written
    if first is None:
        raise UserError(f"tokenize {domain}: no non-empty document in {', '.join(map(str, paths))}")
    with _nothing_left_on_error(data_dir, domain):
        mf.update_manifest(data_dir, tokenizer, domain, None)  # never points at half-rewritten files
        docs = _encoded_documents(
            _chunks(itertools.chain([first], texts)), os.fspath(tokenizer_path), eos_id, workers)
        train, val = _write_splits(docs, data_dir / domain, dtype_for_vocab(tokenizer["vocab_size"]),
                                   domain, val_fraction, max_tokens, _Progress(domain, progress))
        _report(domain, stats, val.num_documents, val_fraction, log)
        entry = {
            "train": f"{domain}/train", "val": f"{domain}/val",
            "train_tokens": train.num_tokens, "val_tokens": val.num_tokens,
            "train_documents": train.num_documents, "val_documents": val.num_documents,
            "sources": sources if sources is not None else [
                {"name": os.fspath(p), "license": license} for p in map(Path, inputs)],
            "license": license, "fingerprint": fingerprint,
        }
        mf.update_manifest(data_dir, tokenizer, domain, entry)
        write_token_bytes(data_dir, tok, eos_id)
        return entry


@contextlib.contextmanager
def _nothing_left_on_error(data_dir: Path, domain: str) -> Iterator[None]:
    """A domain tokenized for the first time leaves nothing behind when tokenizing fails (a bad
    line, a full disk): its folder goes, and the manifest (and data dir) as they were."""
    folder, manifest = data_dir / domain, data_dir / mf.MANIFEST
    new_dir, new_folder = not data_dir.exists(), not folder.exists()
    old = manifest.read_bytes() if manifest.is_file() else None
    try:
        yield
    except BaseException:
        if new_folder:
            shutil.rmtree(folder, ignore_errors=True)
            if old is None:
                manifest.unlink(missing_ok=True)
            else:
                manifest.write_bytes(old)
            if new_dir:
                shutil.rmtree(data_dir, ignore_errors=True)
        raise


def _report(domain: str, stats: ReadStats, val_docs: int, val_fraction: float,
            log: Callable[[str], None]) -> None:
    """Warning lines for replaced bytes and an empty validation split."""
    if stats.replaced_bytes:
        files = ", ".join(stats.replaced_files[:3]) + (" ..." if len(stats.replaced_files) > 3 else "")
        log(f"warning: tokenize {domain}: {stats.replaced_bytes:,} bytes that are not UTF-8 were "
            f"replaced by U+FFFD ({files}); strict mode refuses such input")
    if val_fraction > 0 and val_docs == 0:
        log(f"warning: tokenize {domain}: the validation split is empty: the input is a single "
            "document (split a .txt file with --doc-sep blank, or give more files)")
