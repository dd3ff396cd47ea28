"""The replay part's analysis against hand computations."""

from __future__ import annotations

import math

import pytest

from experiments.repro.common import pooled_sd
from experiments.repro.replay import chain_verdict, replay_analysis, replay_verdict


def _e(up0, up1, a1):
    return {"up": (up0, up1), "A": (7.0, a1), "B": (7.0, 7.0)}


def test_pooled_sd_and_differences_by_hand():
    assert pooled_sd([[1.0, 3.0], [2.0, 2.0], [5.0]]) == pytest.approx(math.sqrt((2.0 + 0.0) / 2))
    assert math.isnan(pooled_sd([[1.0], [2.0]]))
    arms = {0.0: [_e(6.0, 6.5, 5.0), _e(6.0, 6.7, 5.2)],  # F = 0.5, 0.7
            0.01: [_e(6.0, 6.4, 5.1), _e(6.0, 6.6, 5.1)],  # F = 0.4, 0.6
            0.25: [_e(6.0, 6.1, 5.3)]}  # F = 0.1
    an = replay_analysis(arms)
    sd_f = math.sqrt((0.02 + 0.02) / 2)  # both two-seed arms have variance 0.02
    sd_l = math.sqrt((0.02 + 0.0) / 2)
    assert an["sd_forget"] == pytest.approx(sd_f) and an["sd_learn"] == pytest.approx(sd_l)
    d = an["diffs"][0.25]
    assert d["saved"] == pytest.approx(0.6 - 0.1) and d["cost"] == pytest.approx(5.3 - 5.1)
    assert d["saved_noise"] == pytest.approx(sd_f * math.sqrt(1 / 2 + 1))
    assert an["diffs"][0.01]["saved_noise"] == pytest.approx(sd_f)  # sqrt(1/2 + 1/2)
    # saving 0.5 > 2 x 0.173; costs 0.0 and 0.2 stay below saved + 2 x noise
    assert replay_verdict(an) == ("reproduced", "reproduced", "reproduced")


def test_replay_verdict_fails_when_learning_cost_is_large():
    arms = {0.0: [_e(6.0, 6.5, 5.0), _e(6.0, 6.52, 5.01)], 0.25: [_e(6.0, 6.1, 6.0)]}
    assert replay_verdict(replay_analysis(arms)) == ("not reproduced", "reproduced", "not reproduced")
    worse = {0.0: [_e(6.0, 6.1, 5.0), _e(6.0, 6.12, 5.01)], 0.25: [_e(6.0, 6.5, 5.0)]}
    assert replay_verdict(replay_analysis(worse))[0] == "not reproduced"


def test_chain_verdict():
    cos = {"up": 6.0, "A": 5.0, "B": 4.0}
    assert chain_verdict(cos, {"up": 5.9, "A": 5.01, "B": 4.01}, 0.01) == ("reproduced", "reproduced")
    assert chain_verdict(cos, {"up": 6.0, "A": 5.05, "B": 4.0}, 0.01)[0] == "not reproduced"
    assert chain_verdict(cos, {"up": 6.005, "A": 5.0, "B": 4.0}, 0.01)[1] == "inconclusive at this scale"
