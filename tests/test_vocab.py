"""Vocabulary expansion: base ids and logits unchanged, subword-mean rows, padding reuse, masks."""

import json

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer

from cpt_jax import cli, vocab
from cpt_jax import config as config_lib
from cpt_jax.data import readers
from cpt_jax.data.tokenizer import PYTHIA_VOCAB_SIZE, pythia_tokenizer
from cpt_jax.errors import UserError
from cpt_jax.model import pythia

DOCS = [
    "Die Kraftfahrzeughaftpflichtversicherung und die Donaudampfschifffahrtsgesellschaft sind "
    "wichtige Begriffe der Verwaltung. " * 3,
    "数据比例的缩放定律可以预测领域损失和通用损失。领域数据占比过高，损失可能崩溃。",
    "Die Kraftfahrzeughaftpflichtversicherung kostet Geld; die Donaudampfschifffahrtsgesellschaft "
    "fährt auf der Donau.",
    "领域数据和通用数据的比例需要逐步提高，而不是一次性切换。",
] * 5
PLAIN = "The cat sat on the mat, and then it went to sleep in the sun."
TINY = pythia.PythiaConfig(vocab_size=50304, hidden_size=16, num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def base():
    return pythia_tokenizer()


@pytest.fixture(scope="module")
def tiny_params():
    # numpy-filled (eager or jitted init compiles for 13-17 s on a busy 2-core host)
    shapes = jax.eval_shape(lambda: pythia.init_params(TINY, jax.random.key(0)))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def ext40(base):
    return vocab.extend_tokenizer(json.loads(base.to_str()), DOCS, 40)


def test_base_ids_unchanged_and_new_tokens_reachable(base, ext40):
    ext = Tokenizer.from_str(json.dumps(ext40.spec))
    assert ext40.base_size == PYTHIA_VOCAB_SIZE and len(ext40.new_tokens) == 40
    assert ext.get_vocab_size() == PYTHIA_VOCAB_SIZE + 40
    for i in range(PYTHIA_VOCAB_SIZE):
        assert ext.id_to_token(i) == base.id_to_token(i)
    assert ext.encode(PLAIN).ids == base.encode(PLAIN).ids
    for t, i in zip(ext40.new_tokens, ext40.new_ids):
        assert base.token_to_id(t) is None
        assert [x.id for x in ext.model.tokenize(t)] == [i]  # the extended BPE produces it
    enc = ext.encode(DOCS[0])
    assert max(enc.ids) >= PYTHIA_VOCAB_SIZE and ext.decode(enc.ids) == DOCS[0]


def test_bpe_simulation_matches_tokenizers(base):
    spec = json.loads(base.to_str())
    ranks = {vocab._pair(m): i for i, m in enumerate(spec["model"]["merges"])}
    for word in ("Ġunbelievable", "Kraftfahrzeug", "ĠDonaudampfschifffahrt", "æķ°æį®", "aaaaa"):
        assert vocab.bpe_pieces(word, ranks) == [t.value for t in base.model.tokenize(word)]


def test_tokens_per_byte_reduced(base, ext40):
    ext = Tokenizer.from_str(json.dumps(ext40.spec))
    n_bytes = sum(len(d.encode()) for d in DOCS)
    before = sum(len(base.encode(d).ids) for d in DOCS) / n_bytes
    after = sum(len(ext.encode(d).ids) for d in DOCS) / n_bytes
    assert vocab.tokens_per_byte(base, DOCS) == pytest.approx(before)
    assert vocab.tokens_per_byte(ext, DOCS) == pytest.approx(after)
    assert after < 0.9 * before


def random_params(V=50304, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"embed_in": rng.normal(size=(V, d)).astype(np.float32),
            "embed_out": rng.normal(size=(V, d)).astype(np.float32),
            "final_norm": {"scale": np.ones(d, np.float32)}}


def test_new_rows_are_subword_means(base, ext40):
    params = random_params()
    out = vocab.resize_embeddings(params, ext40.base_size, ext40.pieces)
    assert out["embed_in"].shape == (50432, 8)  # 50277 + 40 > 50304: grown to a multiple of 128
    checked_by_text = 0
    for t, i, pieces in zip(ext40.new_tokens, ext40.new_ids, ext40.pieces):
        text = base.decode(pieces)
        if "\ufffd" not in text and base.encode(text).ids == pieces:
            checked_by_text += 1  # the old tokenizer splits the token's text into these pieces
        for name in vocab.EMBEDDINGS:
            want = params[name][pieces].astype(np.float64).mean(axis=0)
            np.testing.assert_allclose(np.asarray(out[name][i]), want, rtol=1e-6, atol=1e-7)
    assert checked_by_text >= 20
    for name in vocab.EMBEDDINGS:
        np.testing.assert_array_equal(np.asarray(out[name][:PYTHIA_VOCAB_SIZE]),
                                      params[name][:PYTHIA_VOCAB_SIZE])
        trained = params[name][:PYTHIA_VOCAB_SIZE].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(np.asarray(out[name][50317:]),
                                   np.broadcast_to(trained, (50432 - 50317, 8)), rtol=1e-5)


def test_padding_rows_reused_before_growing():
    params = random_params()
    pieces = [[5, 7], [100], []]  # [] -> fallback: mean of the trained rows
    out = vocab.resize_embeddings(params, PYTHIA_VOCAB_SIZE, pieces)
    w = params["embed_in"].astype(np.float64)
    assert out["embed_in"].shape == (50304, 8)
    np.testing.assert_allclose(np.asarray(out["embed_in"][50277]), (w[5] + w[7]) / 2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["embed_in"][50278]), w[100], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["embed_in"][50279]), w[:50277].mean(0), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out["embed_in"][50280:]), params["embed_in"][50280:])
    assert vocab.resize_embeddings(params, PYTHIA_VOCAB_SIZE, [[1]] * 27)["embed_in"].shape[0] == 50304
    assert vocab.resize_embeddings(params, PYTHIA_VOCAB_SIZE, [[1]] * 28)["embed_in"].shape[0] == 50432


def test_logits_unchanged_on_text_without_new_tokens(base, ext40, tiny_params):
    params = tiny_params
    grown = vocab.resize_embeddings(params, ext40.base_size, ext40.pieces)
    ext = Tokenizer.from_str(json.dumps(ext40.spec))
    ids = ext.encode(PLAIN).ids
    assert max(ids) < PYTHIA_VOCAB_SIZE
    tokens = np.asarray([ids], np.int32)
    fwd = jax.jit(pythia.forward, static_argnums=2)
    old = np.asarray(fwd(params, tokens, TINY))
    new_cfg = pythia.PythiaConfig(**{**TINY.__dict__, "vocab_size": 50432})
    new = np.asarray(fwd(grown, tokens, new_cfg))
    assert new.shape[-1] == 50432
    np.testing.assert_allclose(new[..., :PYTHIA_VOCAB_SIZE], old[..., :PYTHIA_VOCAB_SIZE],
                               rtol=1e-6, atol=1e-6)


def test_embedding_only_mask_trains_only_new_rows():
    from cpt_jax.optim import make_optimizer
    from cpt_jax.schedules import make_schedule

    params = random_params(V=64)
    rows = [50 % 64, 60]
    cfg = config_lib.defaults()
    schedule = make_schedule(cfg.schedule, cfg.optim.peak_lr, 10)
    tx = make_optimizer(cfg.optim, schedule, vocab.embedding_only_mask(params, rows))
    grads = jax.tree.map(lambda p: np.ones_like(p), params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    masked = vocab.mask_embedding_rows(grads, rows)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        name = path[0].key
        g = masked
        for k in path:
            g = g[k.key]
        if name in vocab.EMBEDDINGS:
            moved = np.flatnonzero(np.abs(np.asarray(u)).sum(axis=1))
            assert moved.tolist() == rows
            assert np.flatnonzero(np.asarray(g).sum(axis=1)).tolist() == rows
        else:
            assert not np.asarray(u).any() and not np.asarray(g).any()


def test_cli_extend(tmp_path, capsys, tiny_params):
    from cpt_jax.model.checkpoint import load_params, save_params

    params = tiny_params
    save_params(tmp_path / "ckpt", params, TINY)
    corpus = tmp_path / "domain.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    out = tmp_path / "ext"
    assert cli.main(["vocab", "extend", "--corpus", str(corpus), "--new-tokens", "20",
                     "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    info = json.loads((out / "vocab.json").read_text())
    assert info["vocab_size"] == 50304 and info["new_rows"] == list(range(50277, 50297))
    assert vocab.load_new_rows(str(out)) == info["new_rows"]
    assert info["tokens_per_byte"]["after"] < info["tokens_per_byte"]["before"]
    assert f"before {info['tokens_per_byte']['before']:.4f}" in text
    new_params, cfg = load_params(out)
    assert cfg.vocab_size == 50304
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == 50297
    p0 = info["new_tokens"][0]["pieces"]
    want = np.asarray(params["embed_out"])[p0].mean(axis=0)
    np.testing.assert_allclose(np.asarray(new_params["embed_out"][50277]), want, rtol=1e-5)


def test_extend_checkpoint_library(tmp_path, tiny_params):
    """The library call behind `vocab extend`: its returned record is what vocab.json holds, and
    the tokens per byte it reports are those of the tokenizers it wrote (recounted here)."""
    from cpt_jax.model.checkpoint import load_params, save_params

    save_params(tmp_path / "ckpt", tiny_params, TINY)
    corpus = tmp_path / "domain.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    out = tmp_path / "ext"
    record = vocab.extend_checkpoint(str(tmp_path / "ckpt"), [str(corpus)], 12, str(out))
    assert record == json.loads((out / vocab.RECORD).read_text())
    assert record["old_vocab_size"] == TINY.vocab_size
    assert record["new_rows"] == list(range(record["base_size"], record["base_size"] + 12))
    assert load_params(out)[1].vocab_size == record["vocab_size"]
    docs = list(readers.iter_documents([corpus]))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)

    def per_byte(tok) -> float:
        return sum(len(tok.encode(d, add_special_tokens=False).ids) for d in docs) / n_bytes

    assert record["tokens_per_byte"]["before"] == pytest.approx(per_byte(pythia_tokenizer()))
    assert record["tokens_per_byte"]["after"] == pytest.approx(
        per_byte(Tokenizer.from_file(str(out / "tokenizer.json"))))
    with pytest.raises(UserError, match="--new-tokens must be > 0"):
        vocab.extend_checkpoint(str(tmp_path / "ckpt"), [str(corpus)], 0, str(tmp_path / "none"))
