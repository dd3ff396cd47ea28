"""The D-CPT reproduction's rule against a planted law: ratio rounding, the preconditions and
the four sub-claims (no training, no fitting)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from cpt_jax import dcpt
from experiments.repro import stats
from experiments.repro.dcpt import judge, run_ratio

LAW = {"general": {"E": 2.0, "A": 30.0, "alpha": 0.3, "B": 50.0, "eta": 0.2, "beta": 0.3, "C": 0.05, "gamma": 0.5},
       "domain": {"E": 1.5, "A": 30.0, "alpha": 0.3, "B": 80.0, "eta": 0.1, "beta": 0.35, "C": 0.2, "gamma": 0.6}}


def test_run_ratio_rounds_to_the_grid_and_stays_inside():
    assert run_ratio(0.437) == 0.45
    assert run_ratio(0.0) == 0.05 and run_ratio(1.0) == 0.95
    assert run_ratio(0.5) == 0.5


def _points(rng, sizes, ratios, D, noise):
    rows = [(n, d, r) for n in sizes for r in ratios for d in D]
    N, Dv, R = (np.array(x, np.float64) for x in zip(*rows))
    loss = {k: dcpt.predict(LAW[k], N, Dv, dcpt.law_ratio(k, R)) * (1 + rng.normal(0, noise, len(N)))
            for k in dcpt.LOSSES}
    return dcpt.Results([f"p{i}" for i in range(len(N))], N, Dv, R, loss["general"], loss["domain"],
                        {float(sizes[-1]): 3.0})


def _m(rng, fit_widths=(32, 48, 64, 96), D=(2e3, 4e3, 8e3, 3.2e4), bias=0.0, chosen_extra=0.0):
    widths = {"fit": fit_widths, "held": 128}
    sizes = {w: 1000 * w for w in (*fit_widths, 128)}
    ratios = (0.1, 0.5, 0.9)
    points = {s: _points(rng, list(sizes.values()), ratios, D, 0.002) for s in range(3)}
    fit = {k: {"params": dict(LAW[k], E=LAW[k]["E"] * (1 + bias))} for k in dcpt.LOSSES} | {"eps": dcpt.DEFAULT_EPS}
    fits = {s: {"fit": fit, "choice": None} for s in range(3)}
    # measured finals at the held-out width: general rises with r, domain falls; limit = 1.03 x 3.0
    measured = {r: {s: {"general": 2.9 + 0.3 * r + rng.normal(0, 0.002),
                        "domain": 3.0 - r + rng.normal(0, 0.002) + (chosen_extra if r == 0.5 else 0)}
                    for s in range(3)} for r in ratios}
    return {"widths": widths, "sizes": sizes, "points": points, "fits": fits, "r_stars": [0.5, 0.52, 0.49],
            "chosen": 0.5, "measured": measured, "d_final": D[-1]}


def test_a_planted_law_with_a_good_design_is_reproduced():
    m = _m(np.random.default_rng(0))
    j = judge(m)
    assert j["verdict"] == stats.REPRODUCED, j["why"]
    # limit = 3.09: r = 0.5 (general 3.05) is the best feasible one, r = 0.9 (3.17) is infeasible
    assert j["limit"] == pytest.approx(3.09)


def test_a_biased_law_does_not_extrapolate():
    j = judge(_m(np.random.default_rng(1), bias=0.2))
    assert j["verdict"] == stats.NOT_REPRODUCED
    errs = [t for t in j["tests"] if t.name.startswith("general")][0]
    assert errs.margin == 0.02 and errs.effect > 0.02


def test_preconditions_two_sizes_or_a_narrow_d_cannot_test():
    j = judge(_m(np.random.default_rng(2), fit_widths=(32, 64)))
    assert j["verdict"] == stats.CANNOT_TEST and "at least 3 fitted sizes: NOT met" in j["why"]
    j = judge(_m(np.random.default_rng(3), D=(1e4, 1.5e4, 2e4)))
    assert j["verdict"] == stats.CANNOT_TEST and "D over 2.0x" in j["why"]


def test_near_optimal_is_a_non_inferiority_t_test():
    m = _m(np.random.default_rng(4))
    j = judge(m)
    near = j["tests"][-1]
    diffs = [m["measured"][0.5][s]["domain"] - m["measured"][0.1][s]["domain"] for s in range(3)]
    ref = sps.ttest_1samp([j["near_margin"] - d for d in diffs], 0)
    assert near.p == pytest.approx(ref.pvalue)


def test_a_chosen_ratio_worse_than_the_best_feasible_fails():
    # the other feasible ratio is 0.1; make the chosen 0.5 worse on the domain than it
    j = judge(_m(np.random.default_rng(5), chosen_extra=0.6))
    assert j["verdict"] == stats.NOT_REPRODUCED and j["tests"][-1].verdict == stats.NOT_REPRODUCED
