"""Raw-text inputs for `cpt-jax tokenize`: documents out of .txt, .jsonl(.gz) and .parquet files.

- ``.txt`` / ``.txt.gz``: by default the whole file is one document. With ``doc_sep`` a file
  holds many: ``"blank"`` splits on blank lines (a line holding only whitespace), any other
  string is a literal separator (``\\n`` and ``\\t`` escapes are understood).
- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line, the text under ``text_field``.
- ``.parquet``: the string column ``text_field``.

Directories expand to the files inside with those suffixes, sorted by path. Empty or
whitespace-only documents are skipped.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import IO, Iterator

from cpt_jax.errors import UserError

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
_BLOCK = 1 << 20


def input_kind(path: Path) -> str:
    """"txt", "jsonl" or "parquet"; UserError for anything else."""
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix.lstrip(".").removesuffix(".gz")
    raise UserError(f"{path}: unknown input type (expected one of {', '.join(SUFFIXES)})")


def expand_inputs(paths: list[str | os.PathLike]) -> list[Path]:
    """Files named, plus the supported files under directories named (sorted); checks existence."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(SUFFIXES))
            if not found:
                raise UserError(f"{p}: directory holds no {', '.join(SUFFIXES)} files")
            out.extend(found)
        elif p.is_file():
            input_kind(p)
            out.append(p)
        else:
            raise UserError(f"{p}: no such input file or directory")
    if not out:
        raise UserError("no input files given")
    return out


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def parse_doc_sep(doc_sep: str | None) -> str | None:
    if doc_sep is None or doc_sep == "blank":
        return doc_sep
    sep = doc_sep.replace("\\n", "\n").replace("\\t", "\t")
    if not sep:
        raise UserError("--doc-sep must not be empty")
    return sep


def _split_blank_lines(f: IO[str]) -> Iterator[str]:
    lines: list[str] = []
    for line in f:
        if line.strip():
            lines.append(line)
        elif lines:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def _split_literal(f: IO[str], sep: str) -> Iterator[str]:
    carry = ""
    for block in iter(lambda: f.read(_BLOCK), ""):
        parts = (carry + block).split(sep)
        carry = parts.pop()
        yield from parts
    yield carry


def _txt_documents(path: Path, doc_sep: str | None) -> Iterator[str]:
    with _open_text(path) as f:
        if doc_sep is None:
            yield f.read()
        elif doc_sep == "blank":
            yield from _split_blank_lines(f)
        else:
            yield from _split_literal(f, doc_sep)


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise UserError(f"{path}:{lineno}: no string field {text_field!r}")
            yield text


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid and friends
        raise UserError(f"{path}: not a readable parquet file ({err})") from None
    if text_field not in pf.schema_arrow.names:
        raise UserError(f"{path}: no column {text_field!r} (has {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


def iter_documents(
    paths: list[Path], text_field: str = "text", doc_sep: str | None = None
) -> Iterator[str]:
    """Every non-empty document of every input, in order."""
    sep = parse_doc_sep(doc_sep)
    for path in paths:
        kind = input_kind(path)
        if kind == "txt":
            docs = _txt_documents(path, sep)
        elif kind == "jsonl":
            docs = _jsonl_documents(path, text_field)
        else:
            docs = _parquet_documents(path, text_field)
        for doc in docs:
            if doc.strip():
                yield doc
