"""`cpt-jax tokenize`: readers, EOS, hold-out, manifest, no-op re-runs, interrupted runs."""

import gzip
import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import save_word_level_tokenizer, word_level_vocab

from cpt_jax.cli import main
from cpt_jax.data import tokenize as tz
from cpt_jax.data.indexed import IndexedDataset
from cpt_jax.data.manifest import domain_prefix, load_manifest
from cpt_jax.errors import UserError

WORDS = "the cat sat on a mat dog ran far away and then came back home".split()
VOCAB = word_level_vocab(WORDS)


@pytest.fixture
def tok_path(tmp_path):
    return save_word_level_tokenizer(tmp_path / "tokenizer.json", VOCAB)


def expected_ids(text):
    return [VOCAB.get(w, 1) for w in text.split()] + [0]


def is_val(i, domain, fraction):  # the documented rule, written out independently
    h = hashlib.blake2b(f"{domain}/{i}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") < fraction * 2**64


def make_docs(n, seed=0):
    rng = np.random.RandomState(seed)
    return [" ".join(rng.choice(WORDS + ["zebra"], rng.randint(1, 30))) for _ in range(n)]


def read_split(data_dir, domain, split):
    ds = IndexedDataset(domain_prefix(data_dir, load_manifest(data_dir), domain, split))
    return [ds[i].tolist() for i in range(len(ds))]


def run(inputs, data_dir, tok_path, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda msg: None)
    return tz.tokenize_domain(inputs, kw.pop("domain", "d"), data_dir, tok_path, **kw)


def test_jsonl_split_and_manifest(tmp_path, tok_path):
    docs = make_docs(300)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs) + "\n")
    out = tmp_path / "out"
    entry = run([src], out, tok_path, text_field="body", val_fraction=0.1, license="CC0-1.0")
    val_ix = [i for i in range(len(docs)) if is_val(i, "d", 0.1)]
    assert 15 < len(val_ix) < 50
    assert read_split(out, "d", "val") == [expected_ids(docs[i]) for i in val_ix]
    assert read_split(out, "d", "train") == [
        expected_ids(d) for i, d in enumerate(docs) if i not in val_ix]
    m = load_manifest(out)
    assert m["tokenizer"]["vocab_size"] == len(VOCAB)
    assert m["tokenizer"]["sha256"] == hashlib.sha256(tok_path.read_bytes()).hexdigest()
    e = m["domains"]["d"]
    assert e == entry and e["train"] == "d/train" and e["val"] == "d/val"
    n_tokens = sum(len(expected_ids(d)) for d in docs)
    assert e["train_tokens"] + e["val_tokens"] == n_tokens
    assert (e["train_documents"], e["val_documents"]) == (len(docs) - len(val_ix), len(val_ix))
    assert e["license"] == "CC0-1.0" and e["sources"] == [{"name": str(src), "license": "CC0-1.0"}]
    assert IndexedDataset(out / "d" / "train").dtype == np.uint16


def test_txt_modes_gzip_and_parquet(tmp_path, tok_path):
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a.txt").write_text("the cat\n\nsat on\n  \na mat\n")
    (d / "b.txt").write_text("dog ran")
    with gzip.open(d / "c.txt.gz", "wt") as f:
        f.write("far away")
    (d / "ignored.md").write_text("not read")
    run([d], tmp_path / "o1", tok_path, val_fraction=0.0)
    assert read_split(tmp_path / "o1", "d", "train") == [
        expected_ids("the cat sat on a mat"), expected_ids("dog ran"), expected_ids("far away")]
    run([d / "a.txt"], tmp_path / "o2", tok_path, val_fraction=0.0, doc_sep="blank")
    assert read_split(tmp_path / "o2", "d", "train") == [
        expected_ids(t) for t in ("the cat", "sat on", "a mat")]
    sep = tmp_path / "s.txt"
    sep.write_text("the cat<DOC>dog<DOC><DOC>ran far")
    run([sep], tmp_path / "o3", tok_path, val_fraction=0.0, doc_sep="<DOC>")
    assert read_split(tmp_path / "o3", "d", "train") == [
        expected_ids(t) for t in ("the cat", "dog", "ran far")]
    pq.write_table(pa.table({"text": ["a mat", None, "home", ""]}), tmp_path / "p.parquet")
    with gzip.open(tmp_path / "j.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "came back"}) + "\n")
    run([tmp_path / "p.parquet", tmp_path / "j.jsonl.gz"], tmp_path / "o4", tok_path,
        val_fraction=0.0)
    assert read_split(tmp_path / "o4", "d", "train") == [
        expected_ids(t) for t in ("a mat", "home", "came back")]


def test_workers_give_identical_bytes(tmp_path, tok_path, monkeypatch):
    monkeypatch.setattr(tz, "_CHUNK_DOCS", 7)  # many chunks, several in flight
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(200, seed=1)))
    run([src], tmp_path / "w1", tok_path, workers=1)
    run([src], tmp_path / "w2", tok_path, workers=2)
    for name in ("train.bin", "train.idx", "val.bin", "val.idx"):
        assert (tmp_path / "w1/d" / name).read_bytes() == (tmp_path / "w2/d" / name).read_bytes()


def test_rerun_is_noop_and_change_retokenizes(tmp_path, tok_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(50)))
    out = tmp_path / "out"
    run([src], out, tok_path)
    mtime = (out / "d" / "train.bin").stat().st_mtime_ns
    messages = []
    run([src], out, tok_path, log=messages.append)
    assert (out / "d" / "train.bin").stat().st_mtime_ns == mtime
    assert "up to date" in messages[0]
    src.write_text(json.dumps({"text": "the cat"}) + "\n")
    entry = run([src], out, tok_path)
    assert entry["train_documents"] + entry["val_documents"] == 1
    assert read_split(out, "d", "train") + read_split(out, "d", "val") == [expected_ids("the cat")]


def test_interrupted_run_leaves_no_done_looking_domain(tmp_path, tok_path, monkeypatch):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(50)))
    out = tmp_path / "out"
    run([src], out, tok_path, domain="keep")
    run([src], out, tok_path, domain="d")
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(60, seed=3)))

    def boom(chunk):
        raise KeyboardInterrupt

    monkeypatch.setattr(tz, "_encode_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        run([src], out, tok_path, domain="d")
    m = load_manifest(out)
    assert "d" not in m["domains"] and "keep" in m["domains"]
    assert not [p for p in (out / "d").iterdir() if ".tmp-" in p.name]


def test_max_tokens_and_val_fallback(tmp_path, tok_path):
    docs = make_docs(100, seed=2)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    entry = run([src], tmp_path / "o", tok_path, max_tokens=100, val_fraction=0.0)
    lengths = np.cumsum([len(expected_ids(d)) for d in docs])
    n = int(np.searchsorted(lengths, 100)) + 1  # stop after the document reaching 100
    assert entry["train_documents"] == n and entry["train_tokens"] == lengths[n - 1]
    three = docs[:3]
    assert not any(is_val(i, "d", 0.01) for i in range(3))  # the rule alone picks none
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in three))
    run([src], tmp_path / "f", tok_path, val_fraction=0.01)
    assert read_split(tmp_path / "f", "d", "val") == [expected_ids(three[-1])]


def test_bad_inputs_raise_user_error(tmp_path, tok_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b")
    with pytest.raises(UserError, match="unknown input type"):
        run([bad], tmp_path / "o", tok_path)
    with pytest.raises(UserError, match="no such input"):
        run([tmp_path / "nope.txt"], tmp_path / "o", tok_path)
    j = tmp_path / "x.jsonl"
    j.write_text('{"text": "the"}\n{"body": "cat"}\n')
    with pytest.raises(UserError, match=r"x.jsonl:2: no string field 'text'"):
        run([j], tmp_path / "o", tok_path)
    with pytest.raises(UserError, match="domain name"):
        run([j], tmp_path / "o", tok_path, domain="../up")
    with pytest.raises(UserError, match="val_fraction"):
        run([j], tmp_path / "o", tok_path, val_fraction=1.5)


def test_one_tokenizer_per_data_dir(tmp_path, tok_path):
    src = tmp_path / "in.txt"
    src.write_text("the cat")
    run([src], tmp_path / "o", tok_path, domain="a")
    save_word_level_tokenizer(tmp_path / "other.json", word_level_vocab([]))
    with pytest.raises(UserError, match="holds domains tokenized with"):
        run([src], tmp_path / "o", tmp_path / "other.json", domain="b")


def test_load_manifest_errors(tmp_path):
    with pytest.raises(UserError, match="no manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        load_manifest(tmp_path)
    good = {"tokenizer": {"name": "t", "sha256": "0", "vocab_size": 5},
            "domains": {"x": {"train": "x/train", "val": "x/val", "train_tokens": 1,
                              "val_tokens": 0, "train_documents": 1, "val_documents": 0,
                              "sources": [], "license": "MIT"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(good))
    assert load_manifest(tmp_path) == good
    good["domains"]["x"]["val_tokens"] = -1
    (tmp_path / "manifest.json").write_text(json.dumps(good))
    with pytest.raises(UserError, match="domains.x.val_tokens"):
        load_manifest(tmp_path)


def test_cli(tmp_path, tok_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("the cat sat")
    code = main(["tokenize", "--input", str(src), "--domain", "cli", "--out", str(tmp_path / "o"),
                 "--tokenizer", str(tok_path), "--workers", "1", "--val-fraction", "0"])
    assert code == 0 and "train 4 tokens / 1 docs" in capsys.readouterr().out
    assert main(["tokenize", "--input", str(tmp_path / "none.txt"), "--domain", "cli",
                 "--out", str(tmp_path / "o"), "--tokenizer", str(tok_path)]) == 2


def test_token_byte_table_written_and_found_by_eval(tmp_path, tok_path):
    """Every tokenize run writes DATA_DIR/token_bytes.npy; a word-level tokenizer decodes each id
    to its word, so the table is the UTF-8 length of each word (0 for the appended EOS)."""
    from tokenizers import Tokenizer

    from cpt_jax import config as C
    from cpt_jax.eval.perplexity import token_bytes_for

    src = tmp_path / "in.txt"
    src.write_text("\n\n".join(make_docs(20)) + "\n")
    out = tmp_path / "out"
    run([src], out, tok_path, val_fraction=0.2)
    table = np.load(out / tz.TOKEN_BYTES)
    tok = Tokenizer.from_file(str(tok_path))
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    want = [0 if w in special or i == 0 else len(w.encode("utf-8"))  # EOS (id 0) is not text
            for w, i in sorted(VOCAB.items(), key=lambda kv: kv[1])]
    assert want[0] == 0 and want[2] == len("the")
    assert table.tolist() == want
    (out / tz.TOKEN_BYTES).unlink()
    run([src], out, tok_path, val_fraction=0.2)  # up to date: still writes the table
    assert (out / tz.TOKEN_BYTES).is_file()
    cfg = C.defaults()
    cfg.data.source, cfg.data.dir = "tokenized", str(out)
    assert token_bytes_for(cfg.data).tolist() == want
    cfg.data.source = "synthetic"
    assert token_bytes_for(cfg.data) is None
