"""The LAWA reproduction's analysis against hand computations (no training)."""

from __future__ import annotations

import json
import math

import pytest

from experiments.repro.common import combine
from experiments.repro.lawa import contrast, gains, split


def test_gains_are_raw_minus_lawa_where_the_window_is_full(tmp_path):
    recs = [{"step": 10, "eval/avg/loss": 7.0},  # no LAWA yet: window not full
            {"step": 20, "eval/avg/loss": 6.5, "eval_lawa/avg/loss": 6.2},
            {"step": 30, "eval/avg/loss": 6.0, "eval_lawa/avg/loss": 6.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    g = gains(tmp_path)
    assert list(g) == [20, 30]
    assert g[20] == pytest.approx(0.3) and g[30] == pytest.approx(-0.1)


def test_split_contrast_and_combine():
    early, late = split({25: 0.3, 50: 0.1, 75: 0.05, 100: 0.01}, steps=100)
    assert early == [0.3, 0.1] and late == [0.05, 0.01]
    diff, se = contrast(early, late)
    # means 0.2 and 0.03; sample sds 0.1414 and 0.02828; se = sqrt(0.02/2 + 0.0008/2)
    assert diff == pytest.approx(0.17)
    assert se == pytest.approx(math.sqrt(0.02 / 2 + 0.0008 / 2))
    assert all(math.isnan(x) for x in contrast([], [1.0]))
    assert combine("reproduced", "reproduced") == "reproduced"
    assert combine("reproduced", "inconclusive at this scale") == "inconclusive at this scale"
    assert combine("reproduced", "not reproduced") == "not reproduced"
