"""The D-CPT reproduction's verdict rule and ratio rounding, against hand computations."""

from __future__ import annotations

import math

from experiments.repro.dcpt import decide, extrapolates, run_ratio


def _held(r2_g, r2_d, err_g=0.1, err_d=0.1):
    return {"general": {"r2": r2_g, "abs_err": err_g}, "domain": {"r2": r2_d, "abs_err": err_d}}


def _runs(**by_ratio):
    return {float(r.replace("_", ".")): [{"seed": i, "general": g, "domain": d}
                                         for i, (g, d) in enumerate(v)] for r, v in by_ratio.items()}


def test_run_ratio_rounds_to_the_grid_and_stays_inside():
    assert run_ratio(0.437) == 0.45
    assert run_ratio(0.0) == 0.05 and run_ratio(1.0) == 0.95
    assert run_ratio(0.5) == 0.5


def test_chosen_within_noise_of_the_best_feasible_is_reproduced():
    # limit 6.0: r = 0.8 is infeasible (general 6.2); best feasible is r = 0.5 (domain 4.00)
    measured = _runs(**{"0_2": [(5.8, 4.5)], "0_5": [(5.9, 4.00), (5.9, 4.02)], "0_8": [(6.2, 3.5)]})
    verdict, why, nums = decide(_held(0.95, 0.97), 0.5, measured, 6.0)
    assert verdict == "reproduced" and nums["best_feasible"] == 0.5
    assert math.isclose(nums["noise"]["domain"], 0.02 / math.sqrt(2))
    assert "0.950" in why and "0.970" in why


def test_worse_than_a_neighbour_beyond_noise_or_poor_extrapolation_is_not_reproduced():
    # chosen 0.2 (4.5) vs best feasible 0.5 (4.0): gap 0.5 >> 2 x sd 0.014
    measured = _runs(**{"0_2": [(5.8, 4.5), (5.8, 4.52)], "0_5": [(5.9, 4.00)]})
    assert decide(_held(0.95, 0.97), 0.2, measured, 6.0)[0] == "not reproduced"
    measured = _runs(**{"0_5": [(5.9, 4.00), (5.9, 4.02)]})
    assert decide(_held(0.5, 0.97), 0.5, measured, 6.0)[0] == "not reproduced"


def test_low_r2_passes_when_the_error_is_within_the_seed_noise():
    # general R^2 0.5 but mean |error| 0.01 <= 2 x sd(5.90, 5.92) = 0.0283
    measured = _runs(**{"0_5": [(5.90, 4.00), (5.92, 4.02)]})
    assert extrapolates(_held(0.5, 0.97, err_g=0.01), {"general": 0.0141, "domain": 0.0141}) == {
        "general": True, "domain": True}
    assert decide(_held(0.5, 0.97, err_g=0.01), 0.5, measured, 6.0)[0] == "reproduced"


def test_missing_numbers_are_inconclusive():
    assert decide(None, None, {}, 6.0)[0] == "inconclusive at this scale"
    one_seed = _runs(**{"0_5": [(5.9, 4.0)]})
    assert decide(_held(0.95, 0.97), 0.5, one_seed, 6.0)[0] == "inconclusive at this scale"
