"""Per-domain perplexity equals a numpy float64 computation from the model's logits."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from cpt_jax.errors import UserError
from cpt_jax.eval import perplexity
from cpt_jax.model import pythia

CFG = pythia.PythiaConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4)


def _numpy_token_losses(params, tokens: np.ndarray) -> np.ndarray:
    logits = np.asarray(pythia.forward(params, tokens[:, :-1], CFG), np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


@pytest.fixture(scope="module")
def setup():
    params = pythia.init_params(CFG, jax.random.key(0))
    rng = np.random.default_rng(0)
    sets = {
        # two batch shapes in one domain, a masked batch in another
        "books": [{"tokens": rng.integers(0, 61, (3, 9), dtype=np.int32), "domain": np.zeros(3, np.int32)},
                  {"tokens": rng.integers(0, 61, (2, 13), dtype=np.int32), "domain": np.zeros(2, np.int32)}],
        "code": [{"tokens": rng.integers(0, 61, (3, 9), dtype=np.int32), "domain": np.ones(3, np.int32),
                  "mask": (rng.random((3, 8)) < 0.6).astype(np.float32)}],
    }
    return params, sets


def test_evaluate_matches_numpy_token_weighted_mean(setup):
    params, sets = setup
    res = perplexity.evaluate(params, CFG, sets)
    for domain, batches in sets.items():
        total, count = 0.0, 0.0
        for b in batches:
            losses = _numpy_token_losses(params, b["tokens"])
            mask = b.get("mask", np.ones_like(losses))
            total += float((losses * mask).sum())
            count += float(mask.sum())
        assert res[domain]["tokens"] == int(count)
        np.testing.assert_allclose(res[domain]["loss"], total / count, rtol=2e-6)
        np.testing.assert_allclose(res[domain]["ppl"], math.exp(total / count), rtol=2e-6)
    # token-weighted over all scored tokens of both batch shapes
    assert res["books"]["tokens"] == 3 * 8 + 2 * 12
    # a random model is near uniform: loss close to log V
    assert abs(res["books"]["loss"] - math.log(61)) < 0.5


def test_chunked_losses_agree(setup):
    params, sets = setup
    a = perplexity.evaluate(params, CFG, {"books": sets["books"][:1]})
    b = perplexity.evaluate(params, CFG, {"books": sets["books"][:1]}, vocab_chunk=3)
    np.testing.assert_allclose(a["books"]["loss"], b["books"]["loss"], rtol=1e-6)


def test_summarize_avg_worst_and_groups():
    res = {"a": {"loss": 1.0, "ppl": math.e, "tokens": 5},
           "b": {"loss": 3.0, "ppl": math.e ** 3, "tokens": 1},
           "c": {"loss": 2.0, "ppl": math.e ** 2, "tokens": 7}}
    s = perplexity.summarize(res, upstream="a,b", downstream=["c"])
    assert s["avg"]["loss"] == pytest.approx(2.0)
    assert s["avg"]["ppl"] == pytest.approx((math.e + math.e ** 2 + math.e ** 3) / 3)
    assert s["worst"] == {"domain": "b", "loss": 3.0, "ppl": pytest.approx(math.e ** 3)}
    assert s["upstream"]["loss"] == pytest.approx(2.0) and s["downstream"]["loss"] == pytest.approx(2.0)
    m = perplexity.to_metrics(res, s)
    assert m["eval/b/loss"] == 3.0 and m["eval/avg/loss"] == pytest.approx(2.0)
    assert m["eval/worst/loss"] == 3.0 and "eval/upstream/loss" in m
    with pytest.raises(UserError, match="upstream domain 'zz'"):
        perplexity.summarize(res, upstream="zz")


def test_bad_batches_are_user_errors(setup):
    params, _ = setup
    with pytest.raises(UserError, match="no batches"):
        perplexity.evaluate(params, CFG, {"x": []})
    with pytest.raises(UserError, match="shape"):
        perplexity.evaluate(params, CFG, {"x": [{"tokens": np.zeros((4,), np.int32)}]})


DOCS = ["café au lait — naïve résumé", "東京は日本の首都です。", "plain ascii text, plain ascii text",
        "emoji 🙂 and straße", "Zürich, Ålesund, Łódź"]


def _byte_level_tokenizer():
    """A small byte-level BPE (as Pythia's) with <|endoftext|> = 0, trained on DOCS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(DOCS * 3, trainer)
    return tok


def test_bits_per_byte_against_the_utf8_length_of_the_text():
    from cpt_jax.data.tokenize import token_byte_lengths

    tok = _byte_level_tokenizer()
    table = token_byte_lengths(tok)
    assert table[tok.token_to_id("<|endoftext|>")] == 0
    ids = [tok.encode(d).ids for d in DOCS]
    for d, i in zip(DOCS, ids):
        assert int(table[i].sum()) == len(d.encode("utf-8"))  # byte-exact per document
    cfg = pythia.PythiaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=1,
                              num_heads=4)
    params = pythia.init_params(cfg, jax.random.key(3))
    # one row per document: EOS then its ids, right-padded; the mask scores the document only
    width = max(map(len, ids)) + 1
    tokens = np.zeros((len(DOCS), width), np.int32)
    mask = np.zeros((len(DOCS), width - 1), np.float32)
    for r, i in enumerate(ids):
        tokens[r, 1:len(i) + 1], mask[r, :len(i)] = i, 1.0
    # the whole stream cut into windows of 9 that split multi-byte characters across windows
    stream = np.concatenate([[0] + i for i in ids]).astype(np.int32)
    stream = np.concatenate([stream, np.zeros(-(len(stream) - 1) % 8, np.int32)])  # EOS: 0 bytes
    windows = np.stack([stream[s:s + 9] for s in range(0, len(stream) - 1, 8)])
    sets = {"docs": [{"tokens": tokens, "mask": mask}], "stream": [{"tokens": windows}]}
    res = perplexity.evaluate(params, cfg, sets, token_bytes=table)
    logits = np.asarray(pythia.forward(params, tokens[:, :-1], cfg), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nats = float((-np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0] * mask).sum())
    nbytes = sum(len(d.encode("utf-8")) for d in DOCS)
    assert res["docs"]["bytes"] == nbytes
    np.testing.assert_allclose(res["docs"]["bpb"], nats / (nbytes * math.log(2)), rtol=2e-6)
    np.testing.assert_allclose(res["docs"]["bpb"], res["docs"]["loss"] * res["docs"]["tokens"]
                               / (nbytes * math.log(2)), rtol=1e-12)
    assert res["stream"]["bytes"] == nbytes  # the windows' targets are the whole stream
    metrics = perplexity.to_metrics(res)
    assert metrics["eval/docs/bpb"] == res["docs"]["bpb"]
    np.testing.assert_allclose(metrics["eval/avg/bpb"],
                               (res["docs"]["bpb"] + res["stream"]["bpb"]) / 2, rtol=1e-12)
    assert "bpb" not in perplexity.evaluate(params, cfg, {"docs": sets["docs"]})["docs"]
    with pytest.raises(UserError, match="outside the byte table of 5 ids"):
        perplexity.evaluate(params, cfg, sets, token_bytes=table[:5])
