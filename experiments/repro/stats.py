"""The verdict rule: t tests at the real degrees of freedom, arms paired by seed, Holm's
correction across the sub-claims of one claim, and the smallest effect a design can detect.

A sub-claim is a :class:`Test`: an ``effect`` signed so that the paper predicts ``> 0``, its
standard error ``se`` and the degrees of freedom ``df`` of that error. With
``t = effect / se`` the two-sided p value is ``p = 2 P(T_df > |t|)``. The ``m`` p values of one
claim are Holm-adjusted (``p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))``, ascending order);
a sub-claim is *reproduced* when its adjusted p < ``ALPHA`` with the predicted sign, *not
reproduced* when so with the other sign, else *inconclusive*. The smallest detectable effect
(two-sided level ``ALPHA / m``, power ``POWER``) is ``(t_{1 - ALPHA/(2m), df} + t_{POWER, df}) se``.

A claim that something *barely matters* is an equivalence test with a stated ``margin`` (two
one-sided tests: ``p = max(P(T > (margin - effect) / se), P(T > (effect + margin) / se))``):
reproduced when the Holm-adjusted p < ``ALPHA``, not reproduced when ``|effect|`` exceeds the
margin with ``P(T > (|effect| - margin) / se) < ALPHA / m``.

The t distribution is computed here from the regularised incomplete beta function,
``P(T_df > t) = I_{df / (df + t^2)}(df / 2, 1 / 2) / 2`` for ``t >= 0``, and inverted by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import betainc

ALPHA = 0.05
POWER = 0.8
REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"
INCONCLUSIVE, CANNOT_TEST = "inconclusive (within noise)", "cannot test at this scale"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, CANNOT_TEST)
MIN_SEEDS = 3


def t_sf(t: float, df: float) -> float:
    """``P(T_df > t)``, the upper tail of Student's t with ``df`` degrees of freedom."""
    if df <= 0 or not math.isfinite(df):
        raise ValueError(f"degrees of freedom must be positive and finite, got {df}")
    tail = 0.5 * float(betainc(df / 2, 0.5, df / (df + t * t)))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_sf`)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > 1 - q:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_sf(mid, df) > 1 - q else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


@dataclass
class Test:
    """One sub-claim: ``effect`` signed so that the paper predicts > 0, its standard error and
    degrees of freedom; ``p`` two-sided, ``p_holm`` after the claim's correction."""

    name: str
    effect: float
    se: float
    df: float
    p: float = math.nan
    p_holm: float = math.nan
    mde: float = math.nan
    verdict: str = INCONCLUSIVE
    margin: float | None = None  # set: an equivalence test, |effect| < margin is the claim
    p_beyond: float = math.nan  # equivalence tests: p of |effect| > margin

    def __post_init__(self) -> None:
        if not self.testable:
            return
        if self.margin is None:
            self.p = min(1.0, 2 * t_sf(abs(self.effect / self.se), self.df))
            return
        e, s, m = self.effect, self.se, self.margin
        self.p = max(t_sf((m - e) / s, self.df), t_sf((e + m) / s, self.df))
        self.p_beyond = t_sf((abs(e) - m) / s, self.df)

    @property
    def testable(self) -> bool:
        return all(math.isfinite(x) for x in (self.effect, self.se, self.df)) and self.se > 0 and self.df > 0

    def text(self, digits: int = 3) -> str:
        if not self.testable:
            return f"{self.name}: {self.effect:+.{digits}f}, no noise estimate -> {self.verdict}"
        head = f"{self.name}: {self.effect:+.{digits}f} ± {self.se:.{digits}f} (df = {self.df:.3g}, "
        if self.margin is not None:
            return (head + f"within ±{self.margin:.{digits}f}: p = {self.p:.3g}, Holm p = {self.p_holm:.3g}; "
                    f"beyond it: p = {self.p_beyond:.3g}) -> {self.verdict}")
        return (head + f"t = {self.effect / self.se:+.2f}, p = {self.p:.3g}, Holm p = {self.p_holm:.3g}; "
                f"smallest detectable {self.mde:.{digits}f}) -> {self.verdict}")


def paired(a: Sequence[float], b: Sequence[float], name: str, margin: float | None = None) -> Test:
    """``mean(a - b)`` over seeds run in both arms (same data order), ``se = sd(a - b) / sqrt(n)``,
    ``df = n - 1``."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if len(d) < 2:
        return Test(name, float(d.mean()) if len(d) else math.nan, math.nan, 0, margin=margin)
    return Test(name, float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d) - 1, margin=margin)


def welch(a: Sequence[float], b: Sequence[float], name: str) -> Test:
    """``mean(a) - mean(b)`` of independent arms, Welch's standard error and
    Welch-Satterthwaite degrees of freedom."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return Test(name, float(a.mean() - b.mean()) if len(a) and len(b) else math.nan, math.nan, 0)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else 0
    return Test(name, float(a.mean() - b.mean()), se, df)


def one_sample(x: Sequence[float], name: str) -> Test:
    """``mean(x)`` against 0 over independent values (seeds), ``df = n - 1``."""
    return paired(x, np.zeros(len(x)), name)


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values, in the input's order."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def min_detectable(se: float, df: float, m: int = 1) -> float:
    """The smallest effect a two-sided test at level ``ALPHA / m`` finds with power ``POWER``."""
    if not (math.isfinite(se) and df > 0):
        return math.nan
    return (t_quantile(1 - ALPHA / (2 * m), df) + t_quantile(POWER, df)) * se


def decide(tests: Sequence[Test]) -> str:
    """Holm-correct ``tests`` (the sub-claims of one claim), set each one's verdict and return
    the claim's: not reproduced when any sub-claim is, reproduced when all are, else inconclusive."""
    live = [t for t in tests if t.testable]
    for t, p in zip(live, holm([t.p for t in live])):
        t.p_holm, t.mde = p, min_detectable(t.se, t.df, len(live))
        if t.margin is not None:
            beyond = t.p_beyond < ALPHA / len(live)
            t.verdict = REPRODUCED if p < ALPHA else NOT_REPRODUCED if beyond else INCONCLUSIVE
        else:
            t.verdict = (REPRODUCED if t.effect > 0 else NOT_REPRODUCED) if p < ALPHA else INCONCLUSIVE
    verdicts = [t.verdict for t in tests]
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return REPRODUCED if verdicts and all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE


@dataclass
class Precondition:
    """What a design needs before its tests mean anything, with the measured numbers."""

    name: str
    ok: bool
    detail: str

    def text(self) -> str:
        return f"{self.name}: {'met' if self.ok else 'NOT met'} ({self.detail})"


def preconditions_text(checks: Sequence[Precondition]) -> tuple[bool, str]:
    """(all met, one sentence listing them)."""
    return all(c.ok for c in checks), "Preconditions: " + "; ".join(c.text() for c in checks) + "."


def verdict_with(checks: Sequence[Precondition], tests: Sequence[Test]) -> tuple[str, str]:
    """The claim's verdict and its reasons: "cannot test at this scale" when a precondition
    fails (the tests are still reported), else :func:`decide`."""
    ok, pre = preconditions_text(checks) if checks else (True, "")
    verdict = decide(tests)
    body = " ".join(t.text() + "." for t in tests)
    return (verdict if ok else CANNOT_TEST), f"{pre} {body}".strip()


def seed_check(arms: dict[str, int]) -> Precondition:
    """Every deciding arm ran at least ``MIN_SEEDS`` seeds."""
    few = {k: n for k, n in arms.items() if n < MIN_SEEDS}
    detail = ", ".join(f"{k} {n}" for k, n in arms.items())
    return Precondition(f"at least {MIN_SEEDS} seeds per deciding arm", not few, f"seeds: {detail}")
