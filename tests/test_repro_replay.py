"""The replay part's analysis against hand computations and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from experiments.repro import stats
from experiments.repro.replay import judge, replay_analysis


def _e(up0, up1, a1, b0=7.0, b1=7.0):
    return {"up": (up0, up1), "A": (7.0, a1), "B": (b0, b1)}


def _m(rng, rep25_up=6.1, rep25_a=5.02, inf_b=5.0, seeds=3):
    shift = rng.normal(0, 0.05, seeds)  # the data order moves every arm alike
    n = lambda: rng.normal(0, 0.003)  # noqa: E731
    ends = {
        "rep0": {s: _e(6.0, 6.5 + shift[s] + n(), 5.0 + shift[s] + n(), b1=6.5) for s in range(seeds)},
        "rep5": {s: _e(6.0, 6.3 + shift[s] + n(), 5.01 + shift[s] + n(), b1=6.5) for s in range(seeds)},
        "rep25": {s: _e(6.0, rep25_up + shift[s] + n(), rep25_a + shift[s] + n(), b1=6.5) for s in range(seeds)},
        "cos_B": {s: _e(6.0, 6.6 + shift[s] + n(), 5.5 + n(), 6.5, 5.0 + shift[s] + n()) for s in range(seeds)},
        "inf_B_anneal": {s: _e(6.0, 6.6 + shift[s] + n(), 5.5 + n(), 6.5, inf_b + shift[s] + n())
                         for s in range(seeds)},
        "inf_B": {s: _e(6.0, 6.6, 5.5, 6.5, 5.3) for s in range(seeds)},
    }
    return {"ends": ends, "shares": {"rep0": 0.0, "rep5": 0.05, "rep25": 0.25}}


def test_replay_analysis_by_hand():
    m = {"ends": {"rep0": {0: _e(6.0, 6.5, 5.0), 1: _e(6.0, 6.7, 5.2)},
                  "rep25": {0: _e(6.0, 6.1, 5.3), 1: _e(6.0, 6.2, 5.3)}},
         "shares": {"rep0": 0.0, "rep25": 0.25}}
    an = replay_analysis(m)
    assert an["forget"][0.0] == pytest.approx([0.5, 0.7]) and an["forget"][0.25] == pytest.approx([0.1, 0.2])
    assert an["learned"] == pytest.approx([2.0, 1.8])


def test_judge_clear_replay_and_matching_chains():
    m = _m(np.random.default_rng(0))
    j = judge(m)
    assert j["claim1"][0] == stats.REPRODUCED and j["claim2"][0] == stats.REPRODUCED
    an = j["an"]
    assert j["claim1"][2][1].p == pytest.approx(sps.ttest_rel(an["forget"][0.0], an["forget"][0.25]).pvalue)
    assert j["margins"][0] == pytest.approx(0.1 * np.mean(an["learned"]))


def test_judge_large_cost_or_a_worse_chain_fail():
    assert judge(_m(np.random.default_rng(1), rep25_a=5.8))["claim1"][0] == stats.NOT_REPRODUCED
    assert judge(_m(np.random.default_rng(2), inf_b=5.6))["claim2"][0] == stats.NOT_REPRODUCED
    assert judge(_m(np.random.default_rng(3), seeds=2))["claim1"][0] == stats.CANNOT_TEST
