"""The D-CPT law (Que et al. 2024): fit it to sweep results and choose the domain ratio.

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


def plot_fit(fit_json: dict, results: Results, path: str | Path) -> None:
    """Predicted against measured loss, one panel per loss; held-out rows marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = match_holdout(results, fit_json.get("holdout", []))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, kind in zip(axes, LOSSES):
        obs = results.loss(kind)
        pred = predicted(fit_json, kind, results.N, results.D, results.r)
        for mask, label, marker in ((~held, "fitted", "o"), (held, "held out", "x")):
            if mask.any():
                sc = ax.scatter(obs[mask], pred[mask], c=results.r[mask], cmap="viridis",
                                vmin=0, vmax=1, marker=marker, label=label)
        lo, hi = min(obs.min(), pred.min()), max(obs.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        q = fit_json[kind].get("fit", {})
        ax.set_title(f"{kind} loss (R^2 {q.get('r2', float('nan')):.3f} fitted)")
        ax.set_xlabel("measured loss")
        ax.set_ylabel("predicted loss")
        ax.legend(loc="upper left")
    fig.colorbar(sc, ax=axes, label="domain ratio r")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ratio(fit_json: dict, N: float, L_g0: float, tolerance: float,
               cases: dict[str, tuple[float | None, float | None, RatioChoice | None]],
               path: str | Path) -> None:
    """Predicted general and domain loss against r, one panel per case ``label -> (D, D_dom,
    choice)``; the feasible region ``L_g <= (1 + T) L_g0`` shaded, r* and the largest r marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = np.linspace(0.0, 1.0, 801)
    limit = (1 + tolerance) * L_g0
    fig, axes = plt.subplots(1, len(cases), figsize=(6.4 * len(cases), 4.4), squeeze=False)
    for ax, (label, (D, D_dom, choice)) in zip(axes[0], cases.items()):
        g, m = curves(fit_json, N, r, D, D_dom)
        ax.fill_between(r, 0, 1, where=g <= limit, transform=ax.get_xaxis_transform(),
                        color="green", alpha=0.12, label="feasible: L_g <= (1+T) L_g0")
        ax.plot(r, g, "-", label="general loss")
        ax.plot(r, m, "--", label="domain loss")
        ax.axhline(limit, color="red", lw=0.8, label=f"(1+T) L_g0, T={tolerance}")
        if choice is not None:
            ax.axvline(choice.r, color="black", lw=1.0, label=f"r* = {choice.r:.3f}")
            ax.axvline(choice.r_max, color="gray", lw=0.8, ls=":",
                       label=f"largest feasible r = {choice.r_max:.3f}")
        ax.set_xlabel("domain ratio r")
        ax.set_ylabel("predicted loss")
        ax.set_title(f"{label}, N={N:.3g}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
