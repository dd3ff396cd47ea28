"""The LAWA reproduction's analysis against hand computations and scipy (no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from cpt_jax.experiment import load_experiment, run_config
from cpt_jax.schedules import make_schedule
from experiments.repro import stats
from experiments.repro.lawa import counted, gains, halves, judge


def test_gains_are_raw_minus_lawa_where_the_window_is_full(tmp_path):
    recs = [{"step": 10, "eval/avg/loss": 7.0},  # no LAWA yet: window not full
            {"step": 20, "eval/avg/loss": 6.5, "eval_lawa/avg/loss": 6.2},
            {"step": 30, "eval/avg/loss": 6.0, "eval_lawa/avg/loss": 6.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    g = gains(tmp_path)
    assert list(g) == [20, 30]
    assert g[20] == pytest.approx(0.3) and g[30] == pytest.approx(-0.1)


def test_only_windows_of_3_to_17_percent_count():
    g = {16: 1.0, 32: 2.0, 48: 3.0, 100: 4.0, 200: 5.0, 300: 6.0}
    # window 8: 8/16 = 50%, 8/32 = 25% out; 8/48 = 16.7% .. 8/200 = 4% in; 8/300 = 2.7% out
    assert list(counted(g, 8)) == [48, 100, 200]
    assert halves({48: 1.0, 100: 3.0, 150: 0.5, 200: 0.1}, 200) == pytest.approx((2.0, 0.3))


def _m(early_hi, late_hi, early_lo, late_lo, steps=200):
    arms = {}
    for arm, e, la in (("high", early_hi, late_hi), ("low", early_lo, late_lo)):
        arms[arm] = {s: {"lr": 1e-2 if arm == "high" else 1e-3, "gains": {},
                         "counted": {64: e[s], 96: e[s], 160: la[s], 192: la[s]}} for s in range(len(e))}
    return {"steps": steps, "window": 8, "k": 5, "every": 2, "schedule": "cosine", "min_lr_ratio": 0.1,
            "eval_every": 16, "arms": arms}


def test_judge_pairs_the_lrs_by_seed():
    m = _m([0.10, 0.12, 0.11], [0.01, 0.02, 0.015], [0.02, 0.025, 0.02], [0.0, 0.005, 0.0])
    j = judge(m)
    assert j["verdict"] == stats.REPRODUCED
    t = j["tests"][2]
    assert t.p == pytest.approx(sps.ttest_rel([0.10, 0.12, 0.11], [0.02, 0.025, 0.02]).pvalue)
    assert j["tests"][0].p == pytest.approx(sps.ttest_1samp([0.10, 0.12, 0.11], 0).pvalue)


def test_judge_constant_schedule_or_two_seeds_cannot_test():
    m = _m([0.10, 0.12, 0.11], [0.01, 0.02, 0.015], [0.02, 0.025, 0.02], [0.0, 0.005, 0.0])
    m["schedule"] = "constant"
    j = judge(m)
    assert j["verdict"] == stats.CANNOT_TEST and "a decaying schedule: NOT met" in j["why"]
    m = _m([0.10, 0.12], [0.01, 0.02], [0.02, 0.025], [0.0, 0.005])
    assert judge(m)["verdict"] == stats.CANNOT_TEST


def test_config_is_cosine_with_the_papers_window():
    shared, runs = load_experiment("configs/repro_lawa.py:full", [])
    window = (shared.lawa.k - 1) * shared.lawa.every
    evals = range(shared.train.eval_every, shared.train.steps + 1, shared.train.eval_every)
    assert sum(0.03 <= window / s <= 0.17 for s in evals) >= 8
    assert len(runs) == 6 and {r["set"]["seed"] for r in runs} == {0, 1, 2}
    cfg = run_config(shared, runs[0], shared.run_dir)
    lr = make_schedule(cfg.schedule, cfg.optim.peak_lr, cfg.train.steps)
    assert float(lr(cfg.train.steps)) == pytest.approx(0.1 * cfg.optim.peak_lr, rel=1e-4)
    assert np.isfinite(float(lr(cfg.train.steps // 2)))
