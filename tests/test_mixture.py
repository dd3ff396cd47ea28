"""Mixture weights, phases, replay quota and the stratified allocation, against brute force."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from cpt_jax.data.mixture import (
    K,
    MixturePlan,
    Stratified,
    bitrev,
    parse_phases,
    parse_weights,
    replay_quota,
)
from cpt_jax.data.sources import permute
from cpt_jax.errors import UserError

NAMES = ["a", "b", "c", "old"]


def test_parse_weights_forms(tmp_path):
    np.testing.assert_allclose(parse_weights("a=0.5,b=0.3", NAMES, NAMES), [0.625, 0.375, 0, 0])
    np.testing.assert_allclose(parse_weights("uniform", NAMES, ["a", "c"]), [0.5, 0, 0.5, 0])
    tokens = {"a": 100, "b": 300, "c": 600, "old": 5}
    np.testing.assert_allclose(
        parse_weights("proportional", NAMES, ["a", "b", "c"], tokens), [0.1, 0.3, 0.6, 0]
    )
    doremi = tmp_path / "domain_weights.json"
    doremi.write_text(json.dumps({"average": {"a": 0.2, "b": 0.2, "c": 0.6}, "final": {"a": 1.0}}))
    np.testing.assert_allclose(parse_weights(str(doremi), NAMES, NAMES), [0.2, 0.2, 0.6, 0])
    flat = tmp_path / "w.json"
    flat.write_text(json.dumps({"old": 3, "a": 1}))
    np.testing.assert_allclose(parse_weights(str(flat), NAMES, NAMES), [0.25, 0, 0, 0.75])


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("a=0.5,zz=0.5", "unknown domain 'zz'"),
        ("a=-1", "finite number >= 0"),
        ("a=x", "is not a number"),
        ("a", "is not DOMAIN=WEIGHT"),
        ("a=0,b=0", "sum to 0"),
        ("missing.json", "cannot read weights file"),
    ],
)
def test_parse_weights_errors(spec, needle):
    with pytest.raises(UserError, match=needle) as err:
        parse_weights(spec, NAMES, NAMES)
    assert "\n" not in str(err.value)


def test_parse_phases():
    assert parse_phases("0:a=1.0;500:a=0.7,b=0.3") == [(0, "a=1.0"), (500, "a=0.7,b=0.3")]
    assert parse_phases("") == []
    for bad in ("10:a=1;5:b=1", "x:a=1", "-1:a=1", "5"):
        with pytest.raises(UserError, match="data.phases"):
            parse_phases(bad)


def test_replay_quota():
    assert [replay_quota(f, 16) for f in (0.0, 0.05, 0.25, 0.5)] == [0, Fraction(4, 5), 4, 8]
    assert replay_quota(0.01, 8) == Fraction(2, 25)  # no longer refused: exact over steps
    assert replay_quota(0.1, 3) == Fraction(3, 10)  # f read as written, not as its binary float
    with pytest.raises(UserError, match="replay all 8"):
        replay_quota(0.9, 8)  # q = 7.2 > B - 1: some batch would hold no new data
    assert replay_quota(0.875, 8) == 7
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(UserError, match=r"\[0, 1\)"):
            replay_quota(bad, 8)


@pytest.mark.parametrize("f, batch", [(0.01, 8), (0.05, 8), (0.25, 10), (0.1, 5), (0.3, 7), (0.875, 8), (0.001, 64)])
def test_replay_counts_follow_the_formula_over_many_steps(f, batch):
    """R_t = floor(f B (t + 1) + 1/2) - floor(f B t + 1/2), computed here in plain Python."""
    plan = MixturePlan(NAMES, [(0, np.array([0.5, 0.5, 0, 0]))], batch, seed=2,
                       replay_weights=np.array([0, 0, 0, 1.0]), replay=replay_quota(f, batch))
    q = Fraction(str(f)) * batch
    steps, total = 2000, 0
    for t in range(steps):
        want = math.floor(q * (t + 1) + Fraction(1, 2)) - math.floor(q * t + Fraction(1, 2))
        dom = plan.layout(t)[0]
        assert (dom == 3).sum() == want == plan.replay_count(t), t
        assert want in (math.floor(q), math.ceil(q))
        total += want
        assert abs(total - q * (t + 1)) <= Fraction(1, 2)  # never more than half a sequence off
        assert plan.replayed_before(t + 1) == total
    assert abs(total / (steps * batch) - f) <= 0.5 / (steps * batch)  # the share is f
    if (f, batch) == (0.01, 8):  # 1% at batch 8: one sequence every 12.5 steps
        gaps = np.diff([t for t in range(steps) if plan.replay_count(t)])
        assert set(gaps.tolist()) == {12, 13} and total == 160


def test_fractional_replay_draws_consecutive_and_resumable():
    phases = [(0, np.array([1.0, 0, 0, 0])), (9, np.array([0.5, 0.5, 0, 0])), (31, np.array([0.2, 0.3, 0.5, 0]))]
    make = lambda: MixturePlan(NAMES, phases, 8, seed=5, replay_weights=np.array([0.25, 0, 0, 0.75]),  # noqa: E731
                               replay=replay_quota(0.13, 8))
    plan = make()
    seen = {i: [] for i in range(4)}
    for k in range(60):
        dom, draw = plan.layout(k)
        for d, j in zip(dom, draw):
            seen[int(d)].append(int(j))
    for i, draws in seen.items():
        assert sorted(draws) == list(range(len(draws))), NAMES[i]  # each draw exactly once
    assert plan.draws_before(60).tolist() == [len(seen[i]) for i in range(4)]
    fresh = make()  # a resumed run computes batch k from k alone
    for k in (59, 31, 30, 9, 8, 0):
        assert all(np.array_equal(x, y) for x, y in zip(fresh.layout(k), plan.layout(k)))
    np.testing.assert_allclose(plan.weights_at(40), [0.2 * 0.87 + 0.25 * 0.13, 0.3 * 0.87, 0.5 * 0.87, 0.75 * 0.13])


def test_bitrev_matches_string_reversal():
    g = np.random.default_rng(0).integers(0, 2**K, size=200, dtype=np.uint64)
    want = [int(format(int(x), f"0{K}b")[::-1], 2) for x in g]
    assert bitrev(g).tolist() == want


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_counts_match_enumeration(seed):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(5))
    w[rng.integers(5)] = 0.0  # a zero-weight domain gets no slot
    alloc = Stratified(w / w.sum(), int(rng.integers(0, 2**K)))
    doms = alloc.domains(0, 3000)
    for total in (0, 1, 2, 7, 64, 1000, 2999, 3000):
        assert alloc.counts(total).tolist() == np.bincount(doms[:total], minlength=5).tolist()
    assert alloc.domains(1234, 100).tolist() == doms[1234:1334].tolist()


def test_fractions_over_1000_batches_within_sampling_error():
    w, batch, steps = np.array([0.5, 0.3, 0.2]), 8, 1000
    plan = MixturePlan(["a", "b", "c"], [(0, w)], batch, seed=3)
    doms = np.concatenate([plan.layout(k)[0] for k in range(steps)])
    n = batch * steps
    counts = np.bincount(doms, minlength=3)
    # multinomial sampling error of n i.i.d. draws: 3 sigma
    assert np.all(np.abs(counts - n * w) <= 3 * np.sqrt(n * w * (1 - w)))
    # the van der Corput allocation is far tighter: |count - n w| <= 2 n D*_n,
    # n D*_n <= log2(n) / 3 + 1 (Bejian-Faure), plus one slot of fixed-point rounding
    assert np.all(np.abs(counts - n * w) <= 2 * (math.log2(n) / 3 + 1) + 1)
    # and every batch of 8 (a power of two) holds floor or ceil of 8 w_i of each domain
    per_batch = doms.reshape(steps, batch)
    for i in range(3):
        c = (per_batch == i).sum(axis=1)
        assert set(c.tolist()) <= {math.floor(batch * w[i]), math.ceil(batch * w[i])}


def test_draws_are_consecutive_per_domain_across_phases_and_replay():
    phases = [(0, np.array([1.0, 0, 0, 0])), (7, np.array([0.5, 0.5, 0, 0])), (20, np.array([0.2, 0.3, 0.5, 0]))]
    plan = MixturePlan(NAMES, phases, 12, seed=1, replay_weights=np.array([0.25, 0, 0, 0.75]), replay=3)
    seen = {i: [] for i in range(4)}
    for k in range(40):
        dom, draw = plan.layout(k)
        for d, j in zip(dom, draw):
            seen[int(d)].append(int(j))
    for i, draws in seen.items():
        assert sorted(draws) == list(range(len(draws))), NAMES[i]  # each draw exactly once
    assert plan.draws_before(40).tolist() == [len(seen[i]) for i in range(4)]
    # layout(k) does not depend on having computed earlier steps
    fresh = MixturePlan(NAMES, phases, 12, seed=1, replay_weights=np.array([0.25, 0, 0, 0.75]), replay=3)
    for k in (39, 20, 6):
        assert all(np.array_equal(x, y) for x, y in zip(fresh.layout(k), plan.layout(k)))


def test_replay_quota_exact_in_every_batch_and_phase_change_at_step():
    phases = [(0, np.array([1.0, 0, 0, 0])), (500, np.array([0.7, 0.3, 0, 0]))]
    plan = MixturePlan(NAMES, phases, 16, seed=0, replay_weights=np.array([0, 0, 0, 1.0]), replay=4)
    for k in list(range(490, 510)) + [0, 999]:
        dom = plan.layout(k)[0]
        assert (dom == 3).sum() == 4  # replay rows: exactly R every batch
        assert ((dom == 1).sum() > 0) == (k >= 500)  # domain b only from step 500 on
    np.testing.assert_allclose(plan.weights_at(499), [0.75, 0, 0, 0.25])
    np.testing.assert_allclose(plan.weights_at(500), [0.525, 0.225, 0, 0.25])
    later = np.concatenate([plan.layout(k)[0] for k in range(500, 1000)])
    np.testing.assert_allclose(np.bincount(later, minlength=4) / len(later), plan.weights_at(500), atol=2e-3)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 1000, 4097])
def test_permute_is_a_bijection(n):
    y = permute(np.arange(n), n, key=12345)
    assert sorted(y.tolist()) == list(range(n))
    if n >= 17:
        assert not np.array_equal(y, np.arange(n))
        assert not np.array_equal(y, permute(np.arange(n), n, key=54321))
