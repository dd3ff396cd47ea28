"""The re-warming reproduction's analysis against hand computations and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from cpt_jax.experiment import load_experiment, run_config
from cpt_jax.schedules import make_schedule
from experiments.repro import stats
from experiments.repro.rewarm import judge, stability_gap


def test_stability_gap_rise_and_recovery():
    g = stability_gap({0: 5.0, 2: 5.4, 4: 5.6, 8: 5.3, 100: 5.2})
    assert g["peak_step"] == 4 and g["rise"] == pytest.approx(0.6) and g["recovery"] == pytest.approx(0.4)
    assert g["recovered_frac"] == pytest.approx(0.4 / 0.6)


def _measurements(rng, noise=0.005):
    """Three seeds; higher peaks learn and forget more; W barely matters; a stability gap."""
    start = (4.0, 6.0)
    mean = {"w1": (4.10, 5.00), "w2": (4.10, 5.00), "w4": (4.101, 5.001), "peak0.5x": (4.05, 5.20),
            "peak2x": (4.20, 4.80), "constant": (4.02, 5.40)}
    seed_shift = rng.normal(0, 0.02, 3)  # data order moves every arm alike: pairing removes it
    final = {a: {s: (u + seed_shift[s] + rng.normal(0, noise), d + seed_shift[s] + rng.normal(0, noise))
                 for s in range(3)} for a, (u, d) in mean.items()}
    curve = {0: 4.0, 1: 4.3, 2: 4.5, 4: 4.35, 100: 4.1}
    curves = {"w2": {s: ({k: v + rng.normal(0, noise) for k, v in curve.items()}, {}) for s in range(3)}}
    return {"T": 200, "W": 2, "final": final, "curves": curves, "start": start, "warmups": [1, 2, 4]}


def test_judge_pairs_seeds_and_reproduces_a_clear_design():
    m = _measurements(np.random.default_rng(0))
    j = judge(m)
    assert [j[k][0] for k in "abcd"] == ["reproduced"] * 4
    # (b)'s learning test is scipy's paired t test on the per-seed learning
    learn2 = [6.0 - m["final"]["peak2x"][s][1] for s in range(3)]
    learn05 = [6.0 - m["final"]["peak0.5x"][s][1] for s in range(3)]
    assert j["b"][2][0].p == pytest.approx(sps.ttest_rel(learn2, learn05).pvalue)
    assert j["b"][2][0].df == 2


def test_judge_two_seeds_cannot_test_and_wrong_sign_fails():
    m = _measurements(np.random.default_rng(1))
    for arm in m["final"].values():
        del arm[2]
    assert judge(m)["b"][0] == stats.CANNOT_TEST
    m = _measurements(np.random.default_rng(2))
    m["final"]["peak2x"], m["final"]["peak0.5x"] = m["final"]["peak0.5x"], m["final"]["peak2x"]
    assert judge(m)["b"][0] == stats.NOT_REPRODUCED


def test_arms_rewarm_from_the_final_lr_to_their_peak():
    shared, runs = load_experiment("configs/repro_rewarm.py:full",
                                   ["--config.train.init_from=runs/repro/pretrain/cosine"])
    by_name = {r["name"]: run_config(shared, r, shared.run_dir) for r in runs}
    T = shared.train.steps
    assert {n.rsplit("_s", 1)[0] for n in by_name} == {"w1", "w2", "w4", "w10", "peak0.5x", "peak2x", "constant"}
    assert all(sum(n.endswith(f"_s{s}") for n in by_name) == 7 for s in range(3))
    assert [round(100 * w / T, 1) for w in (1, 2, 4, 10)] == [0.5, 1.0, 2.0, 5.0]
    for name, w, peak in (("w1_s0", 1, 3e-3), ("w10_s1", 10, 3e-3), ("peak2x_s2", 2, 6e-3)):
        cfg = by_name[name]
        lr = make_schedule(cfg.schedule, cfg.optim.peak_lr, T)
        assert float(lr(0)) == pytest.approx(3e-4, rel=1e-5)
        assert float(lr(w)) == pytest.approx(peak, rel=1e-5)
        assert float(lr(T)) == pytest.approx(0.1 * peak, rel=1e-4)
    const = by_name["constant_s0"]
    lr = make_schedule(const.schedule, const.optim.peak_lr, T)
    assert float(lr(0)) == float(lr(T // 2)) == pytest.approx(3e-4, rel=1e-5)
    assert by_name["w1_s0"].seed != by_name["w1_s1"].seed == by_name["constant_s1"].seed
