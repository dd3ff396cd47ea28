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
