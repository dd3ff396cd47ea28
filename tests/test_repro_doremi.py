"""The DoReMi reproduction's analysis against hand computations (no training)."""

from __future__ import annotations

import json

import pytest

from experiments.repro.doremi import DOMAINS, crossing_step, measure


def test_crossing_step_interpolates_between_evals():
    curve = {25: 8.0, 50: 7.0, 75: 6.5, 100: 6.0}
    # 6.8 lies 0.2 / 0.5 of the way from step 50 (7.0) to step 75 (6.5): 50 + 0.4 * 25 = 60
    assert crossing_step(curve, 6.8) == pytest.approx(60.0)
    assert crossing_step(curve, 7.0) == 50.0  # reached exactly at an eval
    assert crossing_step(curve, 9.0) == 25.0  # below the target from the first eval on
    assert crossing_step(curve, 5.0) is None  # never reached
    assert crossing_step({}, 5.0) is None


def _run(folder, losses, curve):
    folder.mkdir(parents=True)
    final = {d: {"loss": v, "ppl": 1.0, "bpb": 1.0} for d, v in losses.items()}
    (folder / "summary.json").write_text(json.dumps({"steps": 100, "final_eval": final}))
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "eval/avg/loss": v}) + "\n" for s, v in curve.items()))


def test_measure_average_worst_and_speedup(tmp_path):
    base = {d: 6.0 for d in DOMAINS} | {"math": 7.0}  # average 6.1, worst 7.0
    main = {d: 5.9 for d in DOMAINS} | {"math": 6.5}  # average 5.96, worst 6.5
    _run(tmp_path / "main", main, {50: 6.5, 75: 6.05, 100: 5.96})
    _run(tmp_path / "base", base, {50: 6.6, 100: 6.1})
    res = measure({0: (tmp_path / "main", tmp_path / "base")}, steps=100)["seeds"][0]
    assert res["baseline_avg"] == pytest.approx(6.1) and res["main_avg"] == pytest.approx(5.96)
    assert res["baseline_worst"] == 7.0 and res["main_worst"] == 6.5
    # 6.1 between step 50 (6.5) and step 75 (6.05): 50 + 0.4 / 0.45 * 25
    assert res["cross_step"] == pytest.approx(50 + 0.4 / 0.45 * 25)
    assert res["speedup"] == pytest.approx(100 / res["cross_step"])


def test_gain_and_pooled_seed_noise():
    from experiments.repro.common import combine
    from experiments.repro.doremi import gain

    effect, noise = gain([7.0, 7.2], [6.9, 6.95])
    # means 7.1 and 6.925; sample sds 0.1414 and 0.03536; pooled sqrt((0.02 + 0.00125) / 2)
    assert effect == pytest.approx(0.175)
    assert noise == pytest.approx(((0.02 + 0.00125) / 2) ** 0.5)
    assert combine("reproduced", "not reproduced") == "not reproduced"
    assert combine("reproduced", "reproduced") == "reproduced"
