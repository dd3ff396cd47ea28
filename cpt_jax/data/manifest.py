"""``DATA_DIR/manifest.json``: which tokenized domains a data dir holds.

::

    {"tokenizer": {"name": str, "sha256": str, "vocab_size": int},
     "domains": {"<name>": {"train": "<name>/train", "val": "<name>/val",
                            "train_tokens": int, "val_tokens": int,
                            "train_documents": int, "val_documents": int,
                            "sources": [{"name": str, "license": str}, ...],
                            "license": str, "fingerprint": str}}}

``train`` / ``val`` are MMapIndexedDataset prefixes relative to DATA_DIR. Token counts include
the EOS appended to every document. Writers update the file under a lock and replace it
atomically, so a reader never sees half a manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from cpt_jax import storage
from cpt_jax.errors import UserError

MANIFEST = "manifest.json"
DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COUNTS = ("train_tokens", "val_tokens", "train_documents", "val_documents")


def manifest_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / MANIFEST


_STAGED: dict[str, Path] = {}


def local_data_dir(data_dir: str | os.PathLike) -> Path:
    """The data dir to read shards from: itself when local; a ``gs://`` one is copied once per
    process to the local cache (shards are memory-mapped), with one line saying so."""
    key = os.fspath(data_dir)
    if not storage.is_remote(key):
        return Path(key)
    if key not in _STAGED:
        _STAGED[key] = storage.readable_dir(key, "data")
    return _STAGED[key]


def check_domain_name(name: str) -> str:
    if not DOMAIN_NAME.match(name or ""):
        raise UserError(
            f"domain name {name!r} must be letters, digits, '_', '.' or '-' and not start with "
            "'_', '.' or '-'"
        )
    return name


def _validate(data: Any, where: Path) -> dict:
    def bad(msg: str) -> UserError:
        return UserError(f"{where}: {msg}")

    if not isinstance(data, dict):
        raise bad("top level is not a JSON object")
    tok = data.get("tokenizer")
    if not isinstance(tok, dict):
        raise bad("missing 'tokenizer' object")
    for key, typ in (("name", str), ("sha256", str), ("vocab_size", int)):
        if not isinstance(tok.get(key), typ):
            raise bad(f"'tokenizer.{key}' missing or not a {typ.__name__}")
    if tok["vocab_size"] <= 0:
        raise bad("'tokenizer.vocab_size' must be positive")
    domains = data.get("domains")
    if not isinstance(domains, dict):
        raise bad("missing 'domains' object")
    for name, entry in domains.items():
        if not DOMAIN_NAME.match(name):
            raise bad(f"bad domain name {name!r}")
        if not isinstance(entry, dict):
            raise bad(f"domain {name!r} is not an object")
        for key in ("train", "val", "license"):
            if not isinstance(entry.get(key), str):
                raise bad(f"'domains.{name}.{key}' missing or not a string")
        for key in _COUNTS:
            value = entry.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad(f"'domains.{name}.{key}' missing or not a non-negative integer")
        if not isinstance(entry.get("sources"), list):
            raise bad(f"'domains.{name}.sources' missing or not a list")
    return data


def load_manifest(data_dir: str | os.PathLike) -> dict:
    """Read and validate ``DATA_DIR/manifest.json``; one-line UserError when missing or bad."""
    path = manifest_path(local_data_dir(data_dir))
    if not path.is_file():
        raise UserError(
            f"{path}: no manifest (run `cpt-jax tokenize` or `cpt-jax corpus` with --out {data_dir})"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    return _validate(data, path)


def domain_prefix(data_dir: str | os.PathLike, manifest: dict, domain: str, split: str) -> Path:
    """Absolute MMapIndexedDataset prefix of ``domain``'s ``split`` ("train" or "val")."""
    if domain not in manifest["domains"]:
        known = ", ".join(sorted(manifest["domains"])) or "none"
        raise UserError(f"domain {domain!r} not in {manifest_path(data_dir)} (has: {known})")
    if split not in ("train", "val"):
        raise UserError(f"split must be 'train' or 'val', got {split!r}")
    return local_data_dir(data_dir) / manifest["domains"][domain][split]


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_manifest(
    data_dir: str | os.PathLike, tokenizer: dict, domain: str, entry: dict | None
) -> dict:
    """Set (or, with ``entry=None``, remove) one domain; returns the new manifest.

    A data dir holds one tokenizer: adding a domain tokenized with a different one (by sha256)
    is an error while other domains remain.
    """
    data_dir = Path(data_dir)
    path = manifest_path(data_dir)
    with _locked(data_dir):
        current = load_manifest(data_dir) if path.exists() else {"tokenizer": tokenizer, "domains": {}}
        others = {k: v for k, v in current["domains"].items() if k != domain}
        if others and current["tokenizer"]["sha256"] != tokenizer["sha256"]:
            raise UserError(
                f"{path}: holds domains tokenized with {current['tokenizer']['name']} "
                f"(sha256 {current['tokenizer']['sha256'][:12]}...), not {tokenizer['name']}; "
                "use another --out"
            )
        domains = dict(current["domains"])
        if entry is None:
            domains.pop(domain, None)
        else:
            domains[domain] = entry
        new = _validate({"tokenizer": dict(tokenizer), "domains": dict(sorted(domains.items()))}, path)
        tmp = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(new, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return new
