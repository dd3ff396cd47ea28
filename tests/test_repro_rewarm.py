"""The re-warming reproduction's analysis against hand computations."""

from __future__ import annotations

import math

import pytest

from cpt_jax.experiment import load_experiment, run_config
from experiments.repro.common import combine, pooled_sd
from experiments.repro.rewarm import gap_verdict, stability_gap, trend
from cpt_jax.schedules import make_schedule


def test_pooled_sd_is_the_root_mean_of_per_arm_variances():
    # arm 1: sd of (1, 3) = sqrt(2); arm 2: sd of (2, 2) = 0; single-seed arms are left out
    assert pooled_sd([[1.0, 3.0], [2.0, 2.0], [5.0]]) == pytest.approx(1.0)
    assert math.isnan(pooled_sd([[1.0]]))


def test_stability_gap_rise_and_recovery():
    curve = {0: 5.0, 2: 5.4, 4: 5.6, 8: 5.3, 100: 5.2}
    g = stability_gap(curve)
    assert g["peak_step"] == 4 and g["rise"] == pytest.approx(0.6) and g["recovery"] == pytest.approx(0.4)
    assert g["recovered_frac"] == pytest.approx(0.4 / 0.6)
    assert gap_verdict(g, 0.1) == "reproduced"
    # rising without winning anything back is plain forgetting, not a gap
    rising = stability_gap({0: 5.0, 2: 5.2, 4: 5.4, 100: 5.6})
    assert rising["recovery"] < 0 and gap_verdict(rising, 0.05) == "not reproduced"
    assert gap_verdict(stability_gap({0: 5.0, 2: 5.01, 100: 5.0}), 0.1) == "inconclusive at this scale"


def test_trend_and_combine():
    assert trend([0.1, 0.2, 0.4], 0.01, +1) == "reproduced"
    assert trend([0.1, 0.5, 0.4], 0.01, +1) == "not reproduced"  # not monotone
    assert trend([0.1, 0.105, 0.11], 0.01, +1) == "inconclusive at this scale"
    assert trend([0.4, 0.2, 0.1], 0.01, +1) == "not reproduced"
    assert combine("reproduced", "reproduced") == "reproduced"
    assert combine("reproduced", "inconclusive at this scale") == "inconclusive at this scale"
    assert combine("not reproduced", "inconclusive at this scale") == "not reproduced"


def test_arms_rewarm_from_the_final_lr_to_their_peak():
    shared, runs = load_experiment("configs/repro_rewarm.py:full",
                                   ["--config.train.init_from=runs/repro/pretrain/cosine"])
    by_name = {r["name"]: run_config(shared, r, shared.run_dir) for r in runs}
    T = shared.train.steps
    for name, w, peak in (("w0_s0", 0, 3e-3), ("w2_s1", 2, 3e-3), ("peak2x", 1, 6e-3)):
        cfg = by_name[name]
        lr = make_schedule(cfg.schedule, cfg.optim.peak_lr, T)
        assert float(lr(0)) == pytest.approx(3e-3 if w == 0 else 3e-4, rel=1e-5)
        assert float(lr(w)) == pytest.approx(peak, rel=1e-5)
        assert float(lr(T)) == pytest.approx(0.1 * peak, rel=1e-4)
    const = by_name["constant"]
    lr = make_schedule(const.schedule, const.optim.peak_lr, T)
    assert float(lr(0)) == float(lr(T // 2)) == pytest.approx(3e-4, rel=1e-5)
    assert by_name["w0_s0"].seed != by_name["w0_s1"].seed
