"""How much a better mixture could gain at all: a no-transfer per-domain fit.

Assume a domain's held-out loss depends only on the tokens of that domain seen so far,
``L_i(n) = E_i + B_i n^(-beta_i)`` (no transfer between domains; with transfer the room is
larger), fitted to every eval of every run (n = step x weight_i x tokens per step). With a
budget of S steps of ``tau`` tokens, the best mixture minimises the average loss
``(1/k) sum_i L_i(S w_i tau)`` over the simplex. The room over a baseline mixture ``p`` is the
speed-up ``S / S'`` where ``S'`` is the fewest steps at which the best mixture matches the
baseline's average loss at S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import brentq, curve_fit, minimize


@dataclass
class DomainFit:
    """``L(n) = E + B n^(-beta)``."""

    E: float
    B: float
    beta: float

    def __call__(self, n: np.ndarray | float) -> np.ndarray:
        return self.E + self.B * np.maximum(np.asarray(n, np.float64), 1.0) ** (-self.beta)


def fit_domain(tokens: Sequence[float], losses: Sequence[float]) -> DomainFit:
    """Least-squares fit of ``E + B n^(-beta)`` to (tokens of the domain seen, loss) points."""
    n, y = np.asarray(tokens, np.float64), np.asarray(losses, np.float64)
    keep = n > 0
    n, y = n[keep], y[keep]
    if len(n) < 3:
        raise ValueError(f"a domain fit needs 3 points with tokens > 0, got {len(n)}")
    f = lambda x, E, logB, beta: E + np.exp(logB) * x ** (-beta)  # noqa: E731
    p0 = (max(0.0, y.min() - 0.5), math.log(max(y.max() - y.min(), 1e-3)) + 0.3 * math.log(n.min()), 0.3)
    (E, logB, beta), _ = curve_fit(f, n, y, p0=p0, bounds=([0.0, -50.0, 0.01], [y.min(), 50.0, 3.0]),
                                   maxfev=20000)
    return DomainFit(float(E), float(math.exp(logB)), float(beta))


def average_loss(fits: Sequence[DomainFit], weights: np.ndarray, tokens: float) -> float:
    """``(1/k) sum_i L_i(w_i tokens)``."""
    return float(np.mean([f(w * tokens) for f, w in zip(fits, weights)]))


def best_mixture(fits: Sequence[DomainFit], tokens: float) -> np.ndarray:
    """The weights on the simplex that minimise :func:`average_loss` at ``tokens``."""
    k = len(fits)

    def objective(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        return average_loss(fits, w / w.sum(), tokens)

    best = min((minimize(objective, z0, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6,
                                                                        "fatol": 1e-10})
                for z0 in (np.zeros(k), np.log([f.B * f.beta + 1e-9 for f in fits]))), key=lambda r: r.fun)
    w = np.exp(best.x - best.x.max())
    return w / w.sum()


def room(fits: Sequence[DomainFit], baseline: Sequence[float], tokens: float) -> dict[str, float]:
    """The baseline's average loss at ``tokens``, the best mixture's, and the speed-up
    ``tokens / tokens'`` at which the best mixture first matches the baseline."""
    p = np.asarray(baseline, np.float64) / np.sum(baseline)
    target = average_loss(fits, p, tokens)
    best_w = best_mixture(fits, tokens)
    best = average_loss(fits, best_w, tokens)
    if best >= target - 1e-12:
        return {"baseline": target, "best": best, "speedup": 1.0, "weights": best_w.tolist()}
    gap = lambda t: average_loss(fits, best_mixture(fits, t), t) - target  # noqa: E731
    t_match = brentq(gap, tokens * 1e-3, tokens, xtol=tokens * 1e-4) if gap(tokens * 1e-3) > 0 else tokens * 1e-3
    return {"baseline": target, "best": best, "speedup": tokens / t_match, "weights": best_w.tolist()}
