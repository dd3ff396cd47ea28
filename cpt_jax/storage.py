"""Paths that are local folders or Cloud Storage objects (``gs://bucket/...``), one API.

Every verb that reads or writes a run, a checkpoint or a data folder turns the user's string
into a path with ``path()``: an absolute local ``epath.Path``, or a ``gs://`` one (gcsfs through
etils; orbax's tensorstore writes arrays to ``gs://`` natively). Nothing ever makes a local
folder named ``gs:``.

The Cloud Storage endpoint comes from ``STORAGE_EMULATOR_HOST`` when it is set (what Google's
clients and gcsfs honour); tensorstore is pointed at the same endpoint, so a local emulator
serves the whole program. Each gcsfs request times out after ``CPT_JAX_GCS_REQUEST_TIMEOUT_S``
seconds (120, or ``CPT_JAX_STORAGE_TIMEOUT_S`` when shorter); gcsfs retries it with backoff,
then fails (a ``TimeoutError``: exit 75).

Object stores cannot rename or append: JSON files are written whole (one object write is
atomic), local ones through a temporary file and ``os.replace``; appended logs are mirrored
(``Mirror``) from a local folder and uploaded whole.

A storage step that does not finish within its deadline (``cpt_jax.outage``: training's
``storage.timeout_s``, ``CPT_JAX_STORAGE_TIMEOUT_S`` for reads outside training) ends the
program with one line and exit code 75 (``EX_TEMPFAIL``): what is saved stays saved, and a
restart loop (``launch/tpu_vm.sh --restart``, SLURM ``--requeue``) tries again later.
A full local disk is one line naming the folder and the bytes needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cpt_jax.errors import UserError
from cpt_jax.outage import TEMPFAIL, Deadline, read_remote, reading  # noqa: F401  (storage's API)

REMOTE_PREFIXES = ("gs://",)


def check_free_space(folder: Any, needed: int, what: str) -> None:
    """A local ``folder`` must have ``needed`` bytes free (one line naming both, else)."""
    if is_remote(folder) or needed <= 0:
        return
    probe = Path(os.fspath(folder))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise UserError(f"{folder}: {free:,} bytes free, {what} needs about {needed:,}: free "
                        "some space (or lower checkpoint.keep) and run again")


@contextlib.contextmanager
def full_disk_is_one_line(where: Any, what: str, needed: int) -> Iterator[None]:
    """Run the block; an out-of-space error anywhere in it (orbax wraps its writer threads'
    ``OSError``) becomes one UserError line naming ``where``, ``what`` and the bytes needed."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise UserError(f"{where}: no space left on the device while writing {what} (it needs "
                        f"about {needed:,} bytes): free some space and run again") from None


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or anything in its cause chain) is an out-of-space error."""
    import errno

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def is_remote(p: Any) -> bool:
    """True for ``gs://`` paths."""
    return os.fspath(p).startswith(REMOTE_PREFIXES)


def _configure_gcs() -> None:
    """Before first use: gcsfs must not cache listings (other processes and tensorstore write
    the same folders), and an emulator at ``STORAGE_EMULATOR_HOST`` serves tensorstore too."""
    import fsspec.config

    from cpt_jax.outage import read_timeout_s

    # one request never outlasts the whole read's deadline (a silent endpoint: one line, exit 75)
    timeout = float(os.environ.get("CPT_JAX_GCS_REQUEST_TIMEOUT_S", min(120.0, read_timeout_s())))
    for protocol in ("gs", "gcs"):
        conf = fsspec.config.conf.setdefault(protocol, {})
        conf["use_listings_cache"] = False
        conf.setdefault("requests_timeout", timeout)  # a silent endpoint: gcsfs retries, then fails
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return
    url = host if "://" in host else f"http://{host}"
    # tensorstore reads its endpoint from its own variable: keep it on the emulator named now
    # (a value left by an earlier emulator in this process would send array writes to a dead port)
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    # gcsfs probes the bucket type with real credentials first; an emulator has none
    logging.getLogger("gcsfs").setLevel(logging.ERROR)


def path(p: str | os.PathLike) -> Any:
    """An ``epath.Path``: ``gs://`` as is, a local path made absolute (``~`` expanded)."""
    from etils import epath

    text = os.fspath(p)
    if not text:
        raise UserError("empty path")
    if is_remote(text):
        try:
            import gcsfs  # noqa: F401  (etils reads gs:// through it)
        except ImportError:
            raise UserError(f"{text}: gs:// paths need gcsfs (pip install 'cpt-jax[gcs]')") from None
        _configure_gcs()
        if text.rstrip("/") in REMOTE_PREFIXES or text.count("/") < 3 and not text[5:].strip("/"):
            raise UserError(f"{text}: a gs:// path needs a bucket")
        return epath.Path(text.rstrip("/"))
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def local(p: Any) -> Path:
    """A local ``pathlib.Path`` for ``p`` (must not be remote)."""
    if is_remote(p):
        raise UserError(f"{p}: this needs a local path")
    return Path(os.path.abspath(os.fspath(p)))


def write_text(target: Any, text: str) -> None:
    """Write a whole file atomically: readers see the old or the new content, never a part."""
    target = path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(target):
        target.write_text(text)
        return
    tmp = Path(f"{target}.tmp{os.getpid()}")
    try:
        with full_disk_is_one_line(target, target.name, len(text.encode())):
            tmp.write_text(text)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the old file stays whole; no partial copy is left
        raise
    os.replace(tmp, os.fspath(target))


def write_json(target: Any, value: Any) -> None:
    """``value`` as indented JSON, atomically (non-finite floats become null; strings are kept)."""
    write_text(target, json.dumps(_finite(value), indent=2, default=float) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def read_json(source: Any, missing_ok: bool = False) -> Any:
    """Parsed JSON; a missing file is None when ``missing_ok``, else (and a corrupt one) a UserError."""
    source = path(source)
    try:
        text = source.read_text()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise UserError(f"{source} not found") from None
    except OSError as err:
        raise UserError(f"cannot read {source}: {err}") from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise UserError(f"{source} is not valid JSON ({str(err).splitlines()[0]})") from None


def cache_root() -> Path:
    """Where remote files are staged locally (``CPT_JAX_CACHE``, else ``~/.cache/cpt_jax``)."""
    env = os.environ.get("CPT_JAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cpt_jax"


def staging_dir(remote: Any, kind: str) -> Path:
    """A stable local folder for one remote path (same remote -> same folder)."""
    digest = hashlib.sha1(os.fspath(remote).encode()).hexdigest()[:16]
    return cache_root() / kind / digest


def download_dir(remote: Any, dest: Path) -> None:
    """Copy a remote folder tree to ``dest`` (files whose size already matches are kept)."""
    remote = path(remote)
    if not remote.is_dir():
        raise UserError(f"{remote} does not exist or is not a folder")
    for src in files(remote):
        rel = os.fspath(src)[len(os.fspath(remote)):].lstrip("/")
        out = dest / rel
        if out.is_file() and out.stat().st_size == src.stat().length:
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{out}.part")
        with src.open("rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 << 20)
        os.replace(tmp, out)


def files(folder: Any) -> Iterator[Any]:
    """Every file below ``folder`` (recursively), as paths of the same kind (local or ``gs://``;
    epath's own ``walk`` yields ``gs://`` roots without their scheme)."""
    for child in folder.iterdir():
        if child.is_dir():
            yield from files(child)
        else:
            yield child


def upload_dir(local_dir: Path, remote: Any) -> None:
    """Copy a local folder tree to a remote folder (overwriting objects of the same name)."""
    remote = path(remote)
    for root, _dirs, names in os.walk(local_dir):
        for name in names:
            src = Path(root) / name
            upload_file(src, remote / os.path.relpath(src, local_dir))


def upload_file(src: Path, dst: Any) -> None:
    """Copy one local file to ``dst`` (local or remote), streamed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, dst.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 16 << 20)


def readable_dir(p: Any, kind: str, log: Any = None) -> Path:
    """A local folder holding ``p``'s files: ``p`` itself when local, else a staged copy."""
    if not is_remote(p):
        return local(p)
    dest = staging_dir(p, kind)
    (log or _stderr)(f"staging {p} to the local cache {dest}")
    download_dir(p, dest)
    return dest


@contextlib.contextmanager
def writable_dir(target: Any) -> Iterator[Path]:
    """A local folder to write ``target``'s files into: ``target`` itself when local, else a
    temporary folder uploaded to it when the block ends without an error."""
    if not is_remote(target):
        yield local(target)
        return
    with tempfile.TemporaryDirectory(prefix="cpt_jax_upload_") as tmp:
        yield Path(tmp)
        upload_dir(Path(tmp), target)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Mirror:
    """Some files of a folder, written locally and mirrored to it (for files written by appending).

    A local ``target`` is used directly. For ``gs://`` the ``names`` (files or folders) are
    downloaded into a local staging folder, written there, and ``sync()`` uploads the files
    that changed since the last sync.
    """

    def __init__(self, target: Any, names: tuple[str, ...], kind: str = "mirror") -> None:
        self.target = path(target)
        self.remote = is_remote(self.target)
        self.dir = staging_dir(self.target, kind) if self.remote else local(self.target)
        self._sent: dict[str, tuple[int, int]] = {}
        if not self.remote:
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            src = self.target / name
            if src.is_dir():
                download_dir(src, self.dir / name)
            elif src.exists():
                (self.dir / name).write_bytes(src.read_bytes())

    def sync(self) -> None:
        """Upload the files that changed (no-op for a local target)."""
        if not self.remote:
            return
        for root, _dirs, names in os.walk(self.dir):
            for name in names:
                src = Path(root) / name
                st = src.stat()
                key = os.path.relpath(src, self.dir)
                if self._sent.get(key) == (st.st_size, st.st_mtime_ns):
                    continue
                upload_file(src, self.target / key)
                self._sent[key] = (st.st_size, st.st_mtime_ns)
