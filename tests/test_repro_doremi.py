"""The DoReMi reproduction's analysis: interpolation, the no-transfer room, the paired rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from experiments.repro import doremi_room, stats
from experiments.repro.doremi import DOMAINS, crossing_step, judge
from experiments.repro.doremi_room import DomainFit


def test_crossing_step_interpolates_between_evals():
    curve = {25: 8.0, 50: 7.0, 75: 6.5, 100: 6.0}
    # 6.8 lies 0.2 / 0.5 of the way from step 50 (7.0) to step 75 (6.5): 50 + 0.4 * 25 = 60
    assert crossing_step(curve, 6.8) == pytest.approx(60.0)
    assert crossing_step(curve, 7.0) == 50.0  # reached exactly at an eval
    assert crossing_step(curve, 9.0) == 25.0  # below the target from the first eval on
    assert crossing_step(curve, 5.0) is None  # never reached


def test_domain_fit_recovers_a_power_law():
    true = DomainFit(2.0, 30.0, 0.4)
    n = np.geomspace(1e3, 1e6, 8)
    fit = doremi_room.fit_domain(n, true(n))
    assert (fit.E, fit.B, fit.beta) == pytest.approx((2.0, 30.0, 0.4), rel=1e-4)


def test_best_mixture_and_speedup_match_a_grid():
    fits = [DomainFit(2.0, 30.0, 0.4), DomainFit(1.0, 5.0, 0.3)]
    tokens = 1e5
    grid = np.linspace(0.0005, 0.9995, 19991)
    avg = np.array([doremi_room.average_loss(fits, np.array([w, 1 - w]), tokens) for w in grid])
    assert doremi_room.best_mixture(fits, tokens)[0] == pytest.approx(grid[avg.argmin()], abs=1e-3)
    r = doremi_room.room(fits, [0.1, 0.9], tokens)
    # the fewest tokens at which some mixture matches the baseline's average loss, by grid search
    target = doremi_room.average_loss(fits, np.array([0.1, 0.9]), tokens)
    ts = np.geomspace(tokens / 20, tokens, 400)
    best_at = [min(doremi_room.average_loss(fits, np.array([w, 1 - w]), t) for w in grid[::20]) for t in ts]
    t_match = ts[np.argmax(np.array(best_at) <= target)]
    assert r["speedup"] == pytest.approx(tokens / t_match, rel=0.02)
    assert doremi_room.room(fits, r["weights"], tokens)["speedup"] == pytest.approx(1.0, abs=1e-3)


def _world(alpha, natural, rng, tokens=1024, steps=100):
    """Three seeds of a no-transfer world: each domain's loss follows its own power law."""
    laws = {d: DomainFit(1.0 + 0.1 * i, 20.0 + 15.0 * (i % 4), 0.35) for i, d in enumerate(DOMAINS)}
    def run(w, shift):
        curves = {d: {s: float(laws[d](s * w[d] * tokens)) + shift for s in range(10, steps + 1, 10)} for d in DOMAINS}
        avg = {s: float(np.mean([curves[d][s] for d in DOMAINS])) for s in curves[DOMAINS[0]]}
        return {"final": {d: curves[d][steps] + rng.normal(0, 1e-3) for d in DOMAINS}, "weights": w,
                "curves": curves, "avg_curve": avg, "minutes": 1.0, "dir": ""}
    seeds = {}
    for s in range(3):
        shift = rng.normal(0, 0.02)  # the data order moves both arms alike
        seeds[s] = {"alpha": alpha, "main": run(alpha, shift), "baseline": run(natural, shift), "proxy_minutes": 1.2}
    return {"seeds": seeds, "natural": natural, "steps": steps, "proxy_steps": steps, "tokens": tokens,
            "eta": 0.1, "c": 1e-3}


def test_judge_with_room_pairs_seeds():
    rng = np.random.default_rng(0)
    natural = dict(zip(DOMAINS, np.array([0.28, 0.2, 0.16, 0.1, 0.08, 0.06, 0.04, 0.035, 0.025, 0.02])))
    uniform = {d: 0.1 for d in DOMAINS}
    m = _world(uniform, natural, rng)
    j = judge(m)
    assert j["room"]["speedup"] > 1.25 and j["verdict"] == stats.REPRODUCED
    assert j["tests"][0].p == pytest.approx(sps.ttest_rel(j["avg"]["baseline"], j["avg"]["main"]).pvalue)


def test_judge_without_room_cannot_test():
    rng = np.random.default_rng(1)
    uniform = {d: 0.1 for d in DOMAINS}
    laws = {d: DomainFit(1.0, 20.0, 0.35) for d in DOMAINS}  # identical domains: uniform is best
    m = _world(uniform, uniform, rng)
    for s in m["seeds"].values():
        for arm in ("main", "baseline"):
            s[arm]["curves"] = {d: {k: float(laws[d](k * 0.1 * 1024)) for k in range(10, 101, 10)} for d in DOMAINS}
    j = judge(m)
    assert j["verdict"] == stats.CANNOT_TEST and "room over the baseline: NOT met" in j["why"]
