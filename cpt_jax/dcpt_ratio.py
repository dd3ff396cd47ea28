"""Choosing the domain ratio r from a fitted D-CPT law (Que et al. 2024, the trade-off usage).

The pre-CPT general loss ``L_g0`` is the general-validation loss of the base model of size N
before any CPT. The chosen ratio minimises the predicted domain loss subject to
``L_g(N, D, 1 - r) <= (1 + T) * L_g0``; it is the largest feasible ratio only when the domain loss
falls monotonically in r. With a limited domain corpus of ``D_dom`` tokens used once,
``D = D_dom / r``; with a compute budget C at size N, ``D = C / (6 N)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cpt_jax.dcpt import law_ratio, predict
from cpt_jax.errors import UserError


def predicted(fit_json: dict, kind: str, N, D, r_domain) -> np.ndarray:
    """Predicted ``kind`` loss at domain ratio ``r_domain`` from a FIT.json dictionary."""
    return predict(fit_json[kind]["params"], N, D, law_ratio(kind, r_domain), fit_json["eps"])


def pre_cpt_general_loss(fit_json: dict, N: float) -> float | None:
    """L_g0 for model size N from the fit's ``D = 0`` rows (None if there is none)."""
    for key, value in fit_json.get("pre_cpt_general_loss", {}).items():
        if math.isclose(float(key), N, rel_tol=1e-6):
            return float(value)
    return None


def tokens_at(r: np.ndarray | float, D: float | None = None,
              domain_tokens: float | None = None) -> np.ndarray:
    """CPT tokens at domain ratio r: ``D`` fixed, or ``D = D_dom / r`` for a domain budget."""
    if (D is None) == (domain_tokens is None):
        raise UserError("give exactly one of D and domain_tokens")
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.full_like(r, D) if D is not None else domain_tokens / r


def curves(fit_json: dict, N: float, r: np.ndarray | float, D: float | None = None,
           domain_tokens: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ``(L_general, L_domain)`` at domain ratios r (see :func:`tokens_at` for D)."""
    d = tokens_at(r, D, domain_tokens)
    return predicted(fit_json, "general", N, d, r), predicted(fit_json, "domain", N, d, r)


def max_domain_ratio(fit_json: dict, N: float, tolerance: float, L_g0: float,
                     D: float | None = None, domain_tokens: float | None = None,
                     points: int = 20001) -> float | None:
    """Largest domain ratio r in [0, 1] with ``L_g(N, D, 1 - r) <= (1 + T) * L_g0``.

    Give ``D`` (fixed CPT tokens) or ``domain_tokens`` (``D = D_dom / r``). None if no r fits.
    """
    from scipy.optimize import brentq

    limit = (1.0 + tolerance) * L_g0

    def excess(r: np.ndarray | float) -> np.ndarray:
        return curves(fit_json, N, r, D, domain_tokens)[0] - limit

    grid = np.linspace(0.0, 1.0, points)
    ok = np.flatnonzero(excess(grid) <= 0)
    if ok.size == 0:
        return None
    i = int(ok[-1])
    if i == points - 1:
        return 1.0
    return float(brentq(lambda x: float(excess(x)), grid[i], grid[i + 1], xtol=1e-12))


@dataclass
class RatioChoice:
    """The chosen domain ratio ``r``, its CPT tokens ``D``, both predicted losses, and the
    largest feasible ratio ``r_max`` (the old rule, printed beside it)."""

    r: float
    D: float
    general: float
    domain: float
    r_max: float


def _boundaries(excess, grid: np.ndarray, ok: np.ndarray) -> list[float]:
    """Ratios where ``excess`` crosses 0 between neighbouring grid points (brentq)."""
    from scipy.optimize import brentq

    cross = np.flatnonzero(ok[:-1] != ok[1:])
    return [float(brentq(excess, grid[i], grid[i + 1], xtol=1e-13)) for i in cross]


def best_domain_ratio(fit_json: dict, N: float, tolerance: float, L_g0: float,
                      D: float | None = None, domain_tokens: float | None = None,
                      points: int = 20001) -> RatioChoice | None:
    """The ratio minimising the predicted domain loss subject to ``L_g <= (1 + T) L_g0``.

    r* = argmin { L_domain(N, D, r) : r in [0, 1], L_general(N, D, 1 - r) <= (1 + T) L_g0 }
    (Que et al. 2024, the trade-off usage). Candidates: the feasible points of a grid, the
    feasible-region boundaries (brentq) and a bounded refinement around the best grid point.
    None if no ratio is feasible.
    """
    from scipy.optimize import minimize_scalar

    limit = (1.0 + tolerance) * L_g0

    def excess(r: float) -> float:
        return float(curves(fit_json, N, r, D, domain_tokens)[0]) - limit

    def domain(r: float) -> float:
        return float(curves(fit_json, N, r, D, domain_tokens)[1])

    grid = np.linspace(0.0, 1.0, points)
    g, m = curves(fit_json, N, grid, D, domain_tokens)
    ok = g <= limit
    if not ok.any():
        return None
    feasible = np.flatnonzero(ok)
    i = int(feasible[np.argmin(m[feasible])])
    candidates = [float(grid[i])] + _boundaries(excess, grid, ok)
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, points - 1)]
    local = minimize_scalar(domain, bounds=(lo, hi), method="bounded",
                            options={"xatol": 1e-12})
    if excess(float(local.x)) <= 0:
        candidates.append(float(local.x))
    r = min(candidates, key=lambda x: (domain(x), -x))
    g_r, m_r = (float(v) for v in curves(fit_json, N, r, D, domain_tokens))
    r_max = max_domain_ratio(fit_json, N, tolerance, L_g0, D, domain_tokens, points)
    return RatioChoice(r, float(tokens_at(r, D, domain_tokens)), g_r, m_r, max(r_max, r))


def allocate_compute(compute: float, N: float) -> float:
    """CPT tokens a compute budget buys at model size N: ``D = C / (6 N)`` (FLOPs ~ 6 N D)."""
    return compute / (6.0 * N)
