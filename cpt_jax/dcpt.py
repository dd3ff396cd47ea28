"""The D-CPT law (Que et al. 2024): fit it to sweep results (``dcpt_ratio`` chooses the domain
ratio from a fit, ``dcpt_plots`` draws both).

    L(N, D, r) = E + A / N**alpha + B * r**eta / D**beta + C / (r + eps)**gamma

N: model parameters, D: CPT tokens (general + domain), r: the share of D drawn from the corpus
whose validation loss is modelled. The CSV stores the *domain* ratio ``r``; the domain loss is
fitted with ``r`` and the general loss with the general ratio ``1 - r``. ``eps`` is a fixed
constant (not fitted) that keeps the C term finite at ratio 0.

Fitting (Chinchilla style): parameters are searched as ``(e, a, alpha, b, eta, beta, c, gamma)``
with ``E, A, B, C = exp(e, a, b, c)``; ``log L`` is a log-sum-exp of the four terms; the objective
is the Huber loss (delta 1e-3) of ``log L_pred - log L_obs``, minimised with L-BFGS(-B, exponents
kept in [0, 4]) from the best points of a starting grid; the best end point is kept.

Choosing r (the paper's trade-off usage): the pre-CPT general loss ``L_g0`` is the
general-validation loss of the base model of size N before any CPT (a CSV row with ``D = 0``, or
given explicitly). The chosen ratio minimises the predicted domain loss subject to
``L_g(N, D, 1 - r) <= (1 + T) * L_g0``; it is the largest feasible ratio only when the domain loss
falls monotonically in r. With a limited domain corpus of ``D_dom`` tokens used once,
``D = D_dom / r``; with a compute budget C at size N, ``D = C / (6 N)``.

Few-shot fit of a new domain: with a fit on other domains as the base, only the domain-specific
parameters (by default E, B, C) are re-fitted to a few runs on the new domain.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from cpt_jax.errors import UserError

# the columns of the sweep results CSV, in this order (`cpt-jax sweep` writes exactly these)
CSV_COLUMNS: tuple[str, ...] = ("run", "N", "D", "r", "general_loss", "domain_loss")
PARAM_NAMES: tuple[str, ...] = ("E", "A", "alpha", "B", "eta", "beta", "C", "gamma")
LOSSES: tuple[str, ...] = ("general", "domain")
HUBER_DELTA = 1e-3
DEFAULT_EPS = 1e-2
EXPONENT_BOUNDS = (0.0, 4.0)
# re-fitted for a new domain by default (few-shot): the coefficients; the exponents, A and alpha
# (model capacity) come from a fit on other domains
DOMAIN_SPECIFIC: tuple[str, ...] = ("E", "B", "C")
DEFAULT_STARTS = 8
# starting grid over (e, a, alpha, b, eta, beta, c, gamma): 3*4*3*4*3*3*3*3 = 11664 points
DEFAULT_GRID: tuple[tuple[float, ...], ...] = (
    (-0.5, 0.5, 1.0), (0.0, 4.0, 8.0, 12.0), (0.1, 0.4, 0.8), (0.0, 4.0, 8.0, 12.0),
    (0.1, 0.5, 1.0), (0.1, 0.4, 0.8), (-3.0, -1.5, 0.0), (0.1, 0.4, 0.8),
)


@dataclass
class Results:
    """Rows of a results CSV as arrays; ``D == 0`` rows are pre-CPT evaluations (kept apart)."""

    run: list[str]
    N: np.ndarray
    D: np.ndarray
    r: np.ndarray
    general_loss: np.ndarray
    domain_loss: np.ndarray
    pre_cpt_general: dict[float, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.run)

    def select(self, keep: np.ndarray) -> "Results":
        idx = np.flatnonzero(keep)
        return Results([self.run[i] for i in idx], self.N[idx], self.D[idx], self.r[idx],
                       self.general_loss[idx], self.domain_loss[idx], dict(self.pre_cpt_general))

    def loss(self, kind: str) -> np.ndarray:
        return self.general_loss if kind == "general" else self.domain_loss


def _number(text: str, where: str, col: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{where}: column '{col}' = {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: column '{col}' = {text!r} is not finite")
    return value


def read_results(path: str | Path) -> Results:
    """Read and check a results CSV with the columns :data:`CSV_COLUMNS` (extra columns ignored)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such results CSV")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise UserError(f"{path}: missing column '{missing[0]}' (need {','.join(CSV_COLUMNS)})")
        cols: dict[str, list] = {c: [] for c in CSV_COLUMNS}
        pre: dict[float, list[float]] = {}
        for lineno, row in enumerate(reader, start=2):
            where = f"{path} row {lineno} (run {row.get('run')!r})"
            if None in row or any(row[c] is None for c in CSV_COLUMNS):
                raise UserError(f"{where}: wrong number of fields")
            v = {c: _number(row[c], where, c) for c in CSV_COLUMNS[1:]}
            if v["N"] <= 0:
                raise UserError(f"{where}: column 'N' = {row['N']} must be > 0")
            if v["D"] < 0:
                raise UserError(f"{where}: column 'D' = {row['D']} must be >= 0")
            if not 0.0 <= v["r"] <= 1.0:
                raise UserError(f"{where}: column 'r' = {row['r']} is not a ratio in [0, 1]")
            for c in ("general_loss", "domain_loss"):
                if v[c] <= 0:
                    raise UserError(f"{where}: column '{c}' = {row[c]} must be > 0")
            if v["D"] == 0:
                pre.setdefault(v["N"], []).append(v["general_loss"])
                continue
            cols["run"].append(row["run"])
            for c in CSV_COLUMNS[1:]:
                cols[c].append(v[c])
    if not cols["run"]:
        raise UserError(f"{path}: no CPT rows (rows with D > 0)")
    arr = {c: np.asarray(cols[c], dtype=np.float64) for c in CSV_COLUMNS[1:]}
    return Results(cols["run"], arr["N"], arr["D"], arr["r"], arr["general_loss"],
                   arr["domain_loss"], {n: float(np.mean(v)) for n, v in pre.items()})


def law_ratio(kind: str, r_domain: np.ndarray | float) -> np.ndarray:
    """The r of the law for loss ``kind``: the domain ratio, or the general ratio ``1 - r``."""
    if kind not in LOSSES:
        raise UserError(f"loss kind {kind!r} is not one of {', '.join(LOSSES)}")
    r = np.asarray(r_domain, dtype=np.float64)
    return r if kind == "domain" else 1.0 - r


def predict(params: dict[str, float], N, D, r, eps: float = DEFAULT_EPS) -> np.ndarray:
    """L(N, D, r) with named parameters; ``r`` is the law's own ratio (see :func:`law_ratio`)."""
    p = params
    N, D, r = (np.asarray(x, dtype=np.float64) for x in (N, D, r))
    with np.errstate(divide="ignore", invalid="ignore"):
        data = np.where(r > 0, p["B"] * r ** p["eta"] / D ** p["beta"], 0.0)
    return p["E"] + p["A"] / N ** p["alpha"] + data + p["C"] / (r + eps) ** p["gamma"]


def _to_params(theta: np.ndarray) -> dict[str, float]:
    e, a, alpha, b, eta, beta, c, gamma = (float(x) for x in theta)
    return {"E": math.exp(e), "A": math.exp(a), "alpha": alpha, "B": math.exp(b), "eta": eta,
            "beta": beta, "C": math.exp(c), "gamma": gamma}


def _objective(theta: np.ndarray, logN, logD, logr, rpos, logr_eps, logy, delta: float):
    """Sum of Huber(log L_pred - log L_obs) / delta**2, and its gradient in theta."""
    e, a, alpha, b, eta, beta, c, gamma = theta
    terms = np.stack([
        np.full_like(logN, e),
        a - alpha * logN,
        np.where(rpos, b + eta * logr - beta * logD, -np.inf),
        c - gamma * logr_eps,
    ], axis=1)
    top = terms.max(axis=1, keepdims=True)
    w = np.exp(terms - top)
    s = w.sum(axis=1, keepdims=True)
    logpred = (top + np.log(s))[:, 0]
    w = w / s
    res = logpred - logy
    absr = np.abs(res)
    f = np.where(absr <= delta, 0.5 * res**2, delta * (absr - 0.5 * delta)).sum() / delta**2
    g_res = np.clip(res, -delta, delta) / delta**2
    gw = w * g_res[:, None]
    grad = np.array([
        gw[:, 0].sum(), gw[:, 1].sum(), -(gw[:, 1] * logN).sum(), gw[:, 2].sum(),
        (gw[:, 2] * logr).sum(), -(gw[:, 2] * logD).sum(), gw[:, 3].sum(),
        -(gw[:, 3] * logr_eps).sum(),
    ])
    return f, grad


def _grid_values(thetas: np.ndarray, logN, logD, logr, rpos, logr_eps, logy, delta: float):
    """The objective of :func:`_objective` (without gradient) at many thetas [S, 8] at once."""
    e, a, alpha, b, eta, beta, c, gamma = (thetas[:, i:i + 1] for i in range(8))
    data = np.where(rpos, b + eta * logr - beta * logD, -np.inf)
    terms = np.stack(np.broadcast_arrays(e, a - alpha * logN, data, c - gamma * logr_eps), -1)
    top = terms.max(axis=-1)
    res = top + np.log(np.exp(terms - top[..., None]).sum(axis=-1)) - logy
    absr = np.abs(res)
    return np.where(absr <= delta, 0.5 * res**2, delta * (absr - 0.5 * delta)).sum(1) / delta**2


def huber_loss(pred: np.ndarray, obs: np.ndarray, delta: float = HUBER_DELTA) -> float:
    """Mean Huber loss of the log-loss residuals ``log pred - log obs``."""
    res = np.abs(np.log(pred) - np.log(obs))
    return float(np.mean(np.where(res <= delta, 0.5 * res**2, delta * (res - 0.5 * delta))))


def r_squared(pred: np.ndarray, obs: np.ndarray) -> float:
    """R^2 = 1 - SS_res / SS_tot on the losses themselves."""
    ss_tot = float(((obs - obs.mean()) ** 2).sum())
    ss_res = float(((obs - pred) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Limit BLAS to one thread: scipy's L-BFGS-B makes tiny BLAS calls that are many times
    slower threaded (2.6 ms per iteration for 8 parameters on a busy host)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _to_theta(params: dict[str, float]) -> np.ndarray:
    """Inverse of :func:`_to_params`: ``(log E, log A, alpha, log B, eta, beta, log C, gamma)``."""
    return np.array([math.log(params[k]) if k in ("E", "A", "B", "C") else float(params[k])
                     for k in PARAM_NAMES], dtype=np.float64)


def fit_law(N, D, r, loss, *, eps: float = DEFAULT_EPS, delta: float = HUBER_DELTA,
            grid: tuple[tuple[float, ...], ...] = DEFAULT_GRID, starts: int = DEFAULT_STARTS,
            fixed: dict[str, float] | None = None) -> tuple[dict[str, float], float]:
    """Fit the law's parameters to points ``(N, D, r) -> loss`` (r: the law's own ratio).

    ``fixed`` holds parameters kept at given values (few-shot re-fit of a new domain: only the
    others are fitted). The objective is evaluated at every grid point of the free parameters;
    L-BFGS runs from the ``starts`` best of them (all of them when ``starts <= 0``). Returns
    ``(params, mean Huber loss)`` of the best end point.
    """
    from scipy.optimize import minimize

    N, D, r, y = (np.asarray(x, dtype=np.float64) for x in (N, D, r, loss))
    fixed = fixed or {}
    unknown = sorted(set(fixed) - set(PARAM_NAMES))
    if unknown:
        raise UserError(f"unknown D-CPT parameter {unknown[0]!r} (one of {', '.join(PARAM_NAMES)})")
    free = np.array([k not in fixed for k in PARAM_NAMES])
    if len(y) < free.sum():
        raise UserError(f"{len(y)} points cannot fit the law's {int(free.sum())} free parameters")
    base = _to_theta({k: fixed.get(k, 1.0) for k in PARAM_NAMES})
    rpos = r > 0
    args = (np.log(N), np.log(D), np.log(np.where(rpos, r, 1.0)), rpos, np.log(r + eps),
            np.log(y), delta)
    bounds = [(None, None), (None, None), EXPONENT_BOUNDS, (None, None), EXPONENT_BOUNDS,
              EXPONENT_BOUNDS, (None, None), EXPONENT_BOUNDS]
    bounds = [b for b, f in zip(bounds, free) if f]

    def full(x: np.ndarray) -> np.ndarray:
        theta = np.broadcast_to(base, x.shape[:-1] + (len(base),)).copy()
        theta[..., free] = x
        return theta

    def objective(x: np.ndarray):
        f, grad = _objective(full(x), *args)
        return f, grad[free]

    points = np.array(list(itertools.product(*[g for g, f in zip(grid, free) if f])),
                      dtype=np.float64)
    values = np.concatenate([_grid_values(full(chunk), *args) for chunk in np.array_split(
        points, max(1, len(points) // 2048))])
    order = np.argsort(np.where(np.isfinite(values), values, np.inf), kind="stable")
    best_x, best_f = None, math.inf
    with _one_blas_thread():
        for start in [points[i] for i in (order[:starts] if starts > 0 else order)]:
            out = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                           options={"maxiter": 500, "ftol": 1e-15, "gtol": 1e-10})
            if np.isfinite(out.fun) and out.fun < best_f:
                best_x, best_f = out.x, float(out.fun)
    if best_x is None:
        raise UserError("the D-CPT fit did not converge from any starting point")
    params = _to_params(full(best_x))
    params.update({k: float(v) for k, v in fixed.items()})  # exact, not through exp(log(.))
    return params, best_f * delta**2 / len(y)


def match_holdout(results: Results, specs: list[str]) -> np.ndarray:
    """Boolean mask of held-out rows: each spec is ``N=<v>``, ``D=<v>``, ``r=<v>`` or a run name."""
    mask = np.zeros(len(results), dtype=bool)
    for spec in specs:
        key, sep, value = spec.partition("=")
        if sep and key in ("N", "D", "r"):
            v = _number(value, f"--holdout {spec}", key)
            hit = np.isclose(getattr(results, key), v, rtol=1e-9, atol=0.0)
        else:
            hit = np.array([name == spec for name in results.run])
        if not hit.any():
            raise UserError(f"--holdout {spec} matches no CPT row of the results")
        mask |= hit
    return mask


def fit(results: Results, holdout: list[str] | None = None, eps: float = DEFAULT_EPS,
        grid: tuple[tuple[float, ...], ...] = DEFAULT_GRID, starts: int | None = None,
        base: dict | None = None, refit: tuple[str, ...] = DOMAIN_SPECIFIC) -> dict:
    """Fit general and domain loss; report Huber loss and R^2 on fitted and held-out rows.

    With ``base`` (a FIT.json of other domains) only the ``refit`` parameters are fitted and the
    rest, and ``eps``, are taken from ``base``: a few runs on a new domain are enough.
    Returns the FIT.json dictionary.
    """
    held = match_holdout(results, holdout or [])
    train, test = results.select(~held), results.select(held)
    pre = dict(base.get("pre_cpt_general_loss", {})) if base else {}
    pre.update({repr(n): v for n, v in results.pre_cpt_general.items()})
    eps = base["eps"] if base else eps
    out: dict = {"law": "L = E + A/N^alpha + B*r^eta/D^beta + C/(r+eps)^gamma",
                 "eps": eps, "huber_delta": HUBER_DELTA, "holdout": list(holdout or []),
                 "pre_cpt_general_loss": pre}
    if base:
        out["refit"] = list(refit)
    for kind in LOSSES:
        fixed = {k: v for k, v in base[kind]["params"].items() if k not in refit} if base else None
        params, _ = fit_law(train.N, train.D, law_ratio(kind, train.r), train.loss(kind),
                            eps=eps, grid=grid, fixed=fixed,
                            starts=DEFAULT_STARTS if starts is None else starts)
        entry: dict = {"ratio": "r" if kind == "domain" else "1 - r", "params": params}
        for name, part in (("fit", train), ("holdout", test)):
            if len(part):
                pred = predict(params, part.N, part.D, law_ratio(kind, part.r), eps)
                entry[name] = {"points": len(part), "huber": huber_loss(pred, part.loss(kind)),
                               "r2": r_squared(pred, part.loss(kind))}
        out[kind] = entry
    return out
