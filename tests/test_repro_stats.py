"""The reproductions' verdict rule against scipy and hand-worked examples."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments.repro import stats


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 12, 30, 2.5])
def test_t_tail_and_quantiles_match_scipy(df):
    for t in (-3.0, -0.4, 0.0, 0.7, 2.1, 6.0):
        assert stats.t_sf(t, df) == pytest.approx(sps.t.sf(t, df), rel=1e-9, abs=1e-14)
    for q in (0.6, 0.8, 0.95, 0.975, 0.995, 0.9983, 0.02):
        assert stats.t_quantile(q, df) == pytest.approx(sps.t.ppf(q, df), rel=1e-8)


def test_t_quantiles_match_the_printed_table():
    # two-sided 5%: t_{0.975} for df = 1, 2, 4, 10 (Student's table)
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228)):
        assert stats.t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> x3 = 0.03, x2 = 0.06, x1 = 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # sorted 0.001 (x4 = 0.004), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 -> max 0.06)
    assert stats.holm([0.02, 0.001, 0.04, 0.03]) == pytest.approx([0.06, 0.004, 0.06, 0.06])
    assert stats.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])


def test_paired_and_welch_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.3, 4), rng.normal(0.6, 0.5, 4)
    t = stats.paired(a, b, "x")
    assert t.df == 3 and t.p == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-9)
    w = stats.welch(a, b[:3], "x")
    ref = sps.ttest_ind(a, b[:3], equal_var=False)
    assert w.p == pytest.approx(ref.pvalue, rel=1e-9) and w.effect / w.se == pytest.approx(ref.statistic)


def test_two_seeds_is_one_degree_of_freedom():
    # effect = 2.5 x its standard error: a z rule would call it, t with 1 df does not
    t = stats.Test("x", 2.5, 1.0, 1)
    assert t.p == pytest.approx(2 * sps.t.sf(2.5, 1)) and t.p > 0.2
    assert stats.decide([t]) == stats.INCONCLUSIVE


def test_decide_corrects_across_sub_claims():
    # alone, p = 0.03 passes; with a second sub-claim at p = 0.04, Holm makes both 0.06
    two = [stats.Test("a", sps.norm.isf(0.015), 1.0, 1e6), stats.Test("b", sps.norm.isf(0.02), 1.0, 1e6)]
    assert [t.p for t in two] == pytest.approx([0.03, 0.04], rel=1e-4)
    assert stats.decide(two[:1]) == stats.REPRODUCED
    two = [stats.Test("a", sps.norm.isf(0.015), 1.0, 1e6), stats.Test("b", sps.norm.isf(0.02), 1.0, 1e6)]
    assert stats.decide(two) == stats.INCONCLUSIVE
    assert [t.p_holm for t in two] == pytest.approx([0.06, 0.06], rel=1e-3)
    wrong = [stats.Test("a", 10.0, 1.0, 10), stats.Test("b", -10.0, 1.0, 10)]
    assert stats.decide(wrong) == stats.NOT_REPRODUCED and wrong[0].verdict == stats.REPRODUCED


def test_smallest_detectable_effect_has_the_stated_power():
    se, df = 0.1, 10
    mde = stats.min_detectable(se, df, m=2)
    crit = sps.t.ppf(1 - stats.ALPHA / 4, df)
    power = sps.nct.sf(crit, df, mde / se) + sps.nct.cdf(-crit, df, mde / se)
    assert power == pytest.approx(stats.POWER, abs=0.02)


def test_equivalence_is_two_one_sided_tests():
    t = stats.Test("flat", 0.01, 0.02, 5, margin=0.1)
    tost = max(sps.t.sf((0.1 - 0.01) / 0.02, 5), sps.t.sf((0.01 + 0.1) / 0.02, 5))
    assert t.p == pytest.approx(tost)
    assert stats.decide([t]) == stats.REPRODUCED
    far = stats.Test("far", 0.5, 0.02, 5, margin=0.1)
    assert stats.decide([far]) == stats.NOT_REPRODUCED
    vague = stats.Test("vague", 0.05, 0.2, 2, margin=0.1)
    assert stats.decide([vague]) == stats.INCONCLUSIVE


def test_failed_precondition_is_cannot_test_with_numbers():
    checks = [stats.Precondition("room over the baseline", False, "best mixture 1.01x"),
              stats.seed_check({"main": 3, "baseline": 2})]
    verdict, why = stats.verdict_with(checks, [stats.Test("a", 10.0, 1.0, 10)])
    assert verdict == stats.CANNOT_TEST
    assert "best mixture 1.01x" in why and "baseline 2" in why and "NOT met" in why
    assert not math.isnan(stats.t_sf(1.0, 3))
