"""Text clean-up for `cpt-jax corpus`: HTML and roff to plain text, R strings, document chunks.

Pure functions on strings and bytes (no files, no network), so each is tested on hand-made input.
"""

from __future__ import annotations

import re
import struct
from html.parser import HTMLParser
from typing import Callable, Iterator

MAX_DOC_CHARS = 32768


def blank_line(line: str) -> bool:
    return not line.strip()


def headword_line(line: str) -> bool:
    """A dictionary entry starts on a non-empty, non-indented line."""
    return bool(line.strip()) and not line[0].isspace()


def chunk_text(text: str, max_chars: int = MAX_DOC_CHARS,
               boundary: Callable[[str], bool] = blank_line) -> Iterator[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters, joined they give ``text``.

    A piece ends before a line where ``boundary`` holds once it is at least half full, and
    before any line that would overflow it; a single line longer than ``max_chars`` is split.
    """
    if max_chars < 2:
        raise ValueError(f"max_chars must be >= 2, got {max_chars}")
    buf: list[str] = []
    n = 0
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:  # an overlong line (minified data): hard cuts
            if buf:
                yield "".join(buf)
                buf, n = [], 0
            yield line[:max_chars]
            line = line[max_chars:]
        if buf and (n + len(line) > max_chars or (n >= max_chars // 2 and boundary(line))):
            yield "".join(buf)
            buf, n = [], 0
        buf.append(line)
        n += len(line)
    if buf:
        yield "".join(buf)


# ---- HTML ------------------------------------------------------------------------------------

class _HtmlText(HTMLParser):
    """Visible text of a page; with a ``<main>`` / ``role="main"`` element, only its text."""

    BLOCKS = {"p", "div", "br", "li", "tr", "dt", "dd", "pre", "table", "ul", "ol", "dl",
              "blockquote", "section", "h1", "h2", "h3", "h4", "h5", "h6"}
    SKIP = {"script", "style", "head", "nav", "header", "footer", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.main: list[str] = []
        self.skip_tag, self.skip = "", 0  # element being dropped, nesting depth of its tag
        self.main_tag, self.in_main, self.saw_main = "", 0, False
        self.pre = 0

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        if self.in_main:
            self.main.append(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if self.skip:
            self.skip += tag == self.skip_tag
            return
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag in self.SKIP or (tag == "div" and re.search(r"\bnav", cls)) or "headerlink" in cls:
            self.skip_tag, self.skip = tag, 1
            return
        if self.in_main:
            self.in_main += tag == self.main_tag
        elif tag == "main" or a.get("role") == "main":
            self.main_tag, self.in_main, self.saw_main = tag, 1, True
        self.pre += tag == "pre"
        if tag in self.BLOCKS:
            self._emit("\n")
        elif "classifier" in cls:  # numpydoc "name : type" parameter lines
            self._emit(" : ")

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            self.skip -= tag == self.skip_tag
            return
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in self.BLOCKS:
            self._emit("\n")
        if self.in_main and tag == self.main_tag:
            self.in_main -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self._emit(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Plain text of an HTML page: one block per line, ``<pre>`` kept, scripts and nav dropped."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.main if parser.saw_main else parser.parts).replace("\u00b6", "")
    lines = (line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


# ---- roff (man pages) ------------------------------------------------------------------------

_ROFF_ESCAPES = {
    r"\-": "-", r"\(em": "\u2014", r"\(en": "\u2013", r"\(aq": "'", r"\(dq": '"',
    r"\(bu": "\u2022", r"\(co": "\u00a9", r"\(lq": "\u201c", r"\(rq": "\u201d",
    r"\*(lq": "\u201c", r"\*(rq": "\u201d", r"\(ga": "`", r"\(ti": "~", r"\(ha": "^",
    r"\e": "\\", r"\ ": " ", r"\~": " ", r"\&": "", r"\|": "", r"\^": "", r"\c": "",
    r"\%": "", r"\:": "",
}
_ROFF_ESCAPE = re.compile(
    r"\\f(?:\[[^\]]*\]|\(..|.)|\\s[+-]?\d|"  # font and size changes: dropped
    + "|".join(re.escape(k) for k in sorted(_ROFF_ESCAPES, key=len, reverse=True)))
_FONT_MACROS = {"B", "I", "SM", "SB"}
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
_BREAKS = {"PP", "LP", "P", "sp", "TP", "HP", "SS", "SH"}


def _roff_args(rest: str) -> list[str]:
    """Macro arguments: blank-separated, double quotes group (``""`` is a literal quote)."""
    args = []
    for quoted, bare in re.findall(r'"((?:[^"]|"")*)"?|(\S+)', rest):
        args.append(bare if bare else quoted.replace('""', '"'))
    return args


def roff_to_text(roff: str) -> str:
    """Readable text of a man page's roff source: comments, layout requests and fonts dropped.

    Filled text is joined into one line per paragraph (``.nf``/``.EX`` blocks keep their lines);
    headings (``.SH``/``.SS``) stand on their own lines; font macros keep their words and
    alternating ones join them (``.BR ls (1),`` -> ``ls(1),``); tbl format lines are dropped.
    """
    out: list[str] = []
    para: list[str] = []
    fill, table_format = True, False

    def flush() -> None:
        if para:
            out.append(" ".join(para))
            para.clear()

    def emit(text: str) -> None:
        if fill:
            para.append(text)
        else:
            out.append(text)

    for line in roff.splitlines():
        if line.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if table_format:
            table_format = not line.rstrip().endswith(".")
            continue
        if line[:1] not in (".", "'"):
            text = line.replace("T{", "").replace("T}", "")
            if fill and not text.strip():
                flush()
                out.append("")
            elif text.strip() or not fill:
                emit(text)
            continue
        name, _, rest = line[1:].strip().partition(" ")
        args = _roff_args(rest.strip())
        if name in ("SH", "SS"):
            flush()
            out.extend(["", " ".join(args)])
        elif name in _FONT_MACROS:
            emit(" ".join(args))
        elif name in _ALTERNATING:
            emit("".join(args))
        elif name in ("nf", "EX", "fi", "EE", "TS", "TE"):
            flush()
            fill = name in ("fi", "EE", "TE")  # a table's rows keep their lines too
            table_format = name == "TS"
        elif name in _BREAKS or name == "IP":
            flush()
            out.append("")
            if name == "IP" and args:
                emit(args[0])
        # .TH, .RS, .in, .ft, .ad, ... carry no text
    flush()
    text = _ROFF_ESCAPE.sub(lambda m: _ROFF_ESCAPES.get(m.group(0), ""), "\n".join(out))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# ---- R serialisation -------------------------------------------------------------------------

class RFormatError(ValueError):
    """Bytes that are not the R character vector ``r_strings`` reads."""


def r_strings(blob: bytes) -> list[str]:
    """Decode an R-serialised character vector (XDR, format 2 or 3); NA becomes "".

    Layout: ``b"X\\n"``, int32 version, writer and reader R versions, (v3: int32 length and the
    native encoding name), then the STRSXP header (flags, length) and per element a CHARSXP
    header (flags, byte length; -1 for NA) and its bytes. All integers big-endian.
    """
    try:
        if blob[:2] != b"X\n":
            raise RFormatError("not an XDR R serialisation")
        (version,) = struct.unpack_from(">i", blob, 2)
        pos = 14
        if version == 3:
            (nelen,) = struct.unpack_from(">i", blob, pos)
            pos += 4 + nelen
        elif version != 2:
            raise RFormatError(f"R serialisation version {version}, expected 2 or 3")
        flags, n = struct.unpack_from(">ii", blob, pos)
        pos += 8
        if flags & 0xFF != 16:  # STRSXP
            raise RFormatError(f"R object of type {flags & 0xFF}, expected a character vector (16)")
        out = []
        for _ in range(n):
            _, length = struct.unpack_from(">ii", blob, pos)
            pos += 8
            if length > len(blob) - pos:
                raise RFormatError("string runs past the end of the data")
            raw = blob[pos : pos + max(length, 0)]
            try:
                out.append("" if length < 0 else raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(raw.decode("latin-1"))
            pos += max(length, 0)
        return out
    except struct.error:
        raise RFormatError("R data ends early") from None
