"""Raw-text inputs for `cpt-jax tokenize`: documents out of .txt, .jsonl(.gz) and .parquet files.

- ``.txt`` / ``.txt.gz``: by default the whole file is one document. With ``doc_sep`` a file
  holds many: ``"blank"`` splits on blank lines (a line holding only whitespace), any other
  string is a literal separator (``\\n`` and ``\\t`` escapes are understood).
- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line, the text under ``text_field``.
- ``.parquet``: the string column ``text_field``.

Directories expand to the files inside with those suffixes, sorted by path. Empty or
whitespace-only documents are skipped.

Memory stays bounded: text is read in blocks, and a document longer than ``DOC_CHARS``
characters (a whole large ``.txt``, a file without blank lines) is cut at line breaks into
pieces of at most that size, each tokenized as a document of its own. Bytes that are not
UTF-8 become U+FFFD and are counted in ``ReadStats``; ``strict=True`` refuses them instead.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import io
import json
import os
import zlib
from pathlib import Path
from typing import IO, Iterator

from cpt_jax.errors import UserError

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
_BLOCK = 1 << 20
DOC_CHARS = 1 << 20  # longest document handed to the tokenizer, in characters
_REPLACED = [0]  # undecodable bytes replaced so far in this process


def _count_replace(err: UnicodeError) -> tuple[str, int]:
    _REPLACED[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("cpt_jax_count", _count_replace)


@dataclasses.dataclass
class ReadStats:
    """Undecodable bytes replaced by U+FFFD while reading, and the files that held them."""

    replaced_bytes: int = 0
    replaced_files: list[str] = dataclasses.field(default_factory=list)


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


def _open_text(path: Path, strict: bool = False) -> IO[str]:
    errors = "strict" if strict else "cpt_jax_count"
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors=errors)
    return open(path, encoding="utf-8", errors=errors)


def parse_doc_sep(doc_sep: str | None) -> str | None:
    if doc_sep is None or doc_sep == "blank":
        return doc_sep
    sep = doc_sep.replace("\\n", "\n").replace("\\t", "\t")
    if not sep:
        raise UserError("--doc-sep must not be empty")
    return sep


def _cut(text: str) -> int:
    """Where to cut a text longer than ``DOC_CHARS``: after its last line break within the
    limit, else at the limit."""
    return text.rfind("\n", 0, DOC_CHARS) + 1 or DOC_CHARS


def _whole_file(f: IO[str]) -> Iterator[str]:
    """The file as one document, streamed in pieces of at most ``DOC_CHARS``."""
    buf = ""
    for block in iter(lambda: f.read(_BLOCK), ""):
        buf += block
        while len(buf) > DOC_CHARS:
            cut = _cut(buf)
            yield buf[:cut]
            buf = buf[cut:]
    yield buf


def _split_blank_lines(f: IO[str]) -> Iterator[str]:
    lines: list[str] = []
    size = 0
    for line in f:
        if line.strip():
            lines.append(line)
            size += len(line)
            if size > DOC_CHARS:  # no blank line for a long stretch: bounded pieces
                yield from _pieces("".join(lines))
                lines, size = [], 0
        elif lines:
            yield "".join(lines)
            lines, size = [], 0
    if lines:
        yield "".join(lines)


def _split_literal(f: IO[str], sep: str) -> Iterator[str]:
    carry = ""
    for block in iter(lambda: f.read(_BLOCK), ""):
        parts = (carry + block).split(sep)
        carry = parts.pop()
        for part in parts:
            yield from _pieces(part)
        if len(carry) > DOC_CHARS + len(sep):
            keep = len(sep) - 1  # a separator may straddle the block boundary
            head, carry = carry[: len(carry) - keep], carry[len(carry) - keep:]
            while len(head) > DOC_CHARS:
                cut = _cut(head)
                yield head[:cut]
                head = head[cut:]
            carry = head + carry
    yield from _pieces(carry)


def _pieces(text: str) -> Iterator[str]:
    while len(text) > DOC_CHARS:
        cut = _cut(text)
        yield text[:cut]
        text = text[cut:]
    yield text


def _txt_documents(path: Path, doc_sep: str | None, strict: bool) -> Iterator[str]:
    with _open_text(path, strict) as f:
        if doc_sep is None:
            yield from _whole_file(f)
        elif doc_sep == "blank":
            yield from _split_blank_lines(f)
        else:
            yield from _split_literal(f, doc_sep)


def _jsonl_documents(path: Path, text_field: str, strict: bool) -> Iterator[str]:
    with _open_text(path, strict) as f:
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
            yield from _pieces(text)


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading parquet needs pyarrow (pip install 'cpt-jax[parquet]')") from None

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid and friends
        raise UserError(f"{path}: not a readable parquet file ({err})") from None
    if text_field not in pf.schema_arrow.names:
        raise UserError(f"{path}: no column {text_field!r} (has {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield from _pieces(text)


def iter_documents(
    paths: list[Path], text_field: str = "text", doc_sep: str | None = None, *,
    strict: bool = False, stats: ReadStats | None = None,
) -> Iterator[str]:
    """Every non-empty document of every input, in order (long ones in ``DOC_CHARS`` pieces).

    Non-UTF-8 bytes are replaced and counted in ``stats``; with ``strict`` they are a
    UserError. A truncated or corrupt ``.gz`` is a UserError naming the file."""
    sep = parse_doc_sep(doc_sep)
    stats = stats if stats is not None else ReadStats()
    for path in paths:
        before = _REPLACED[0]
        try:
            for doc in _file_documents(path, text_field, sep, strict):
                if doc.strip():
                    yield doc
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not valid UTF-8 ({err.reason}); without strict checking "
                            "such bytes are replaced by U+FFFD") from None
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise UserError(f"{path}: truncated or corrupt compressed file ({err})") from None
        if _REPLACED[0] > before:
            stats.replaced_bytes += _REPLACED[0] - before
            stats.replaced_files.append(str(path))


def _file_documents(path: Path, text_field: str, sep: str | None, strict: bool) -> Iterator[str]:
    kind = input_kind(path)
    if kind == "txt":
        return _txt_documents(path, sep, strict)
    if kind == "jsonl":
        return _jsonl_documents(path, text_field, strict)
    return _parquet_documents(path, text_field)
