"""D-CPT law (Que et al. 2024): fit ``L(N, D, r)`` on four model sizes, predict a larger one,
and check the ratio the law chooses against measured runs at the held-out size.

    L(N, D, r) = E + A / N**alpha + B * r**eta / D**beta + C / (r + eps)**gamma

N is the model's non-embedding parameters (the transformer layers and the final LayerNorm, not
the ``embed_in`` / ``embed_out`` rows); D the CPT tokens. Each continuation's evaluations are
``(N, D, r)`` points; the law is fitted on the ``fit`` widths once per seed (``cpt_jax.dcpt.fit``,
held-out rows ``N = N_held``), each refit chooses r* (``cpt_jax.dcpt_ratio.best_domain_ratio``:
lowest predicted domain loss with ``L_g <= (1 + T) L_g0`` at the held-out N and the final D),
and the mean r* (rounded to the grid) is run at the held-out width on every seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cpt_jax import checks, dcpt, experiment
from cpt_jax.dcpt_ratio import best_domain_ratio, curves
from cpt_jax.errors import UserError
from experiments.repro import settings, stats
from experiments.repro.common import Context, Section, final_losses, group_curve, md_table, mean_loss, pm
from experiments.repro.dcpt_figures import plot_fit, plot_ratio

PART = "dcpt"
TOLERANCE = 0.03  # T: the general loss may rise by 3% over the pre-CPT loss L_g0
RATIO_STEP = 0.05  # r* is run rounded to this grid, within [RATIO_STEP, 1 - RATIO_STEP]
EXTRAPOLATION = 0.02  # "predicts": mean relative error at the held-out size within ±2%
NEAR_OPTIMAL = 0.1  # "near-optimal": within 10% of the measured domain-loss range over ratios
FEASIBLE = 0.01  # the chosen ratio's general loss may exceed (1 + T) L_g0 by 1% of L_g0
MIN_FIT_SIZES, MIN_D_SPAN = 3, 4.0


def non_embedding_params(cfg) -> int:
    """N of the law: every parameter but the ``embed_in`` and ``embed_out`` rows (V x d each)."""
    from cpt_jax.model import pythia  # noqa: PLC0415 (jax import on demand)

    model = pythia.PythiaConfig.from_config(cfg.model)
    return int(pythia.count_params(model)) - 2 * int(cfg.model.vocab_size) * int(cfg.model.hidden_size)


def _ratio(cfg) -> float:
    return float(checks.comma_list(cfg.data.weights)[0].split("=")[1])


def law_points(shared, runs: list[dict], root: Path, seed: int) -> tuple[dcpt.Results, dict[int, int]]:
    """Every evaluation (step > 0) of the continuations of ``seed`` as a law point; the bases'
    general loss as ``L_g0(N)``. Returns the results and ``{width: N}``."""
    tokens = int(shared.train.batch_size) * int(shared.train.seq_len)
    cols: dict[str, list] = {k: [] for k in dcpt.CSV_COLUMNS}
    pre, sizes = {}, {}
    for run in runs:
        cfg = experiment.run_config(shared, run, root)
        n, folder = non_embedding_params(cfg), root / run["name"]
        sizes[int(cfg.model.hidden_size)] = n
        if not run.get("from"):
            pre[float(n)] = mean_loss(final_losses(folder), settings.UPSTREAM)
            continue
        if int(cfg.seed) != seed:
            continue
        general = group_curve(folder, settings.UPSTREAM)
        domain = group_curve(folder, [settings.DOMAIN_A])
        for step in sorted(set(general) & set(domain) - {0}):
            for key, value in (("run", f"{run['name']}@{step}"), ("N", n), ("D", step * tokens),
                               ("r", _ratio(cfg)), ("general_loss", general[step]),
                               ("domain_loss", domain[step])):
                cols[key].append(value)
    arr = {k: np.asarray(v, np.float64) for k, v in cols.items() if k != "run"}
    return dcpt.Results(cols["run"], arr["N"], arr["D"], arr["r"], arr["general_loss"],
                        arr["domain_loss"], pre), sizes


def fit_quality(fit_json: dict, results: dcpt.Results, n: int) -> dict:
    """R^2 and mean |relative error| of both losses on the rows of size ``n``."""
    part = results.select(np.isclose(results.N, n))
    out = {"points": len(part)}
    for kind in dcpt.LOSSES:
        pred = dcpt.predict(fit_json[kind]["params"], part.N, part.D,
                            dcpt.law_ratio(kind, part.r), fit_json["eps"])
        obs = part.loss(kind)
        out[kind] = {"r2": dcpt.r_squared(pred, obs),
                     "abs_err": float(np.mean(np.abs(pred - obs))),
                     "rel_err": float(np.mean(np.abs(pred / obs - 1)))}
    return out


def run_ratio(r_star: float) -> float:
    """The ratio actually run for r*: rounded to ``RATIO_STEP`` and kept off 0 and 1."""
    k = round(r_star / RATIO_STEP)
    return round(min(max(k, 1), round(1 / RATIO_STEP) - 1) * RATIO_STEP, 2)


def held_out_runs(shared, runs: list[dict], root: Path, held: int) -> dict[float, dict[int, dict]]:
    """``{r: {seed: final {general, domain}}}`` of the continuations of the held-out width."""
    out: dict[float, dict[int, dict]] = {}
    for run in runs:
        cfg = experiment.run_config(shared, run, root)
        if not run.get("from") or int(cfg.model.hidden_size) != held:
            continue
        losses = final_losses(root / run["name"])
        out.setdefault(round(_ratio(cfg), 4), {})[int(cfg.seed)] = {
            "general": mean_loss(losses, settings.UPSTREAM), "domain": mean_loss(losses, [settings.DOMAIN_A])}
    return dict(sorted(out.items()))


def refit(results: dcpt.Results, n_held: int, d_final: int, log) -> dict[str, Any]:
    """One refit of the law with the held-out size left out, and the r* it chooses."""
    try:
        fit_json = dcpt.fit(results, holdout=[f"N={n_held}"])
    except UserError as err:
        log(f"dcpt: no fit ({err})")
        return {"fit": None, "choice": None}
    L_g0 = results.pre_cpt_general[float(n_held)]
    return {"fit": fit_json, "choice": best_domain_ratio(fit_json, n_held, TOLERANCE, L_g0, D=d_final)}


def collect(ctx: Context) -> dict[str, Any]:
    """Train the grid, refit per seed, run the chosen ratio at the held-out width on every seed."""
    root = ctx.part_dir(PART)
    shared, runs = experiment.load_experiment(ctx.config_file(PART), ctx.overrides(root))
    module = ctx.module(PART)
    experiment.run_experiment(shared, runs, log=ctx.log)
    widths = module.WIDTHS[ctx.size]
    d_final = int(shared.train.batch_size) * int(shared.train.seq_len) * module.CPT_STEPS[ctx.size]
    points, fits = {}, {}
    for seed in module.SEEDS:
        points[seed], sizes = law_points(shared, runs, root, seed)
        fits[seed] = refit(points[seed], sizes[widths["held"]], d_final, ctx.log)
    r_stars = [f["choice"].r for f in fits.values() if f["choice"] is not None]
    chosen = run_ratio(float(np.mean(r_stars))) if r_stars else None
    grid = module.RATIOS[ctx.size]
    if chosen is not None and not any(math.isclose(chosen, g) for g in grid):
        runs = runs + module.extra_runs(shared, [chosen], module.SEEDS)
        experiment.run_experiment(shared, runs, log=ctx.log)
    return {"shared": shared, "module": module, "widths": widths, "sizes": sizes, "points": points,
            "fits": fits, "r_stars": r_stars, "chosen": chosen, "d_final": d_final,
            "measured": held_out_runs(shared, runs, root, widths["held"])}


def _held_errors(m: dict, kind: str) -> list[float]:
    """Per refit: mean relative error (predicted / measured - 1) of ``kind`` at the held-out size."""
    n = m["sizes"][m["widths"]["held"]]
    out = []
    for seed, f in m["fits"].items():
        if f["fit"] is None:
            continue
        part = m["points"][seed].select(np.isclose(m["points"][seed].N, n))
        pred = dcpt.predict(f["fit"][kind]["params"], part.N, part.D, dcpt.law_ratio(kind, part.r), f["fit"]["eps"])
        out.append(float(np.mean(pred / part.loss(kind) - 1)))
    return out


def judge(m: dict[str, Any]) -> dict[str, Any]:
    """Preconditions (>= 3 fitted sizes, D over >= 4x, 3 refits and 3 seeds at the chosen ratio),
    then four sub-claims, Holm-corrected: both losses extrapolate (equivalence), the chosen ratio
    is feasible and no worse than the best other measured feasible ratio (non-inferiority)."""
    p0 = next(iter(m["points"].values()))
    span = float(p0.D.max() / p0.D.min()) if len(p0) else 0.0
    n_held = m["sizes"][m["widths"]["held"]]
    L_g0 = p0.pre_cpt_general[float(n_held)]
    limit = (1 + TOLERANCE) * L_g0
    tests = [stats.paired(_held_errors(m, k), [0.0] * len(_held_errors(m, k)),
                          f"{k} loss at the held-out size, mean relative error", margin=EXTRAPOLATION)
             for k in dcpt.LOSSES]
    measured, chosen = m["measured"], m["chosen"]
    at_chosen = measured.get(chosen, {}) if chosen is not None else {}
    near = math.nan
    if at_chosen:
        mean_g = {r: np.mean([v["general"] for v in x.values()]) for r, x in measured.items()}
        mean_d = {r: np.mean([v["domain"] for v in x.values()]) for r, x in measured.items()}
        others = [r for r in measured if mean_g[r] <= limit and not math.isclose(r, chosen)]
        near = NEAR_OPTIMAL * float(max(mean_d.values()) - min(mean_d.values()))
        tests.append(stats.one_sample([limit + FEASIBLE * L_g0 - v["general"] for v in at_chosen.values()],
                                      f"general-loss limit + {FEASIBLE:g} L_g0 minus the chosen r's general loss"))
        if others:  # near-optimal: no worse than the best other feasible ratio, within the margin
            best = min(others, key=mean_d.get)
            seeds = sorted(set(at_chosen) & set(measured[best]))
            tests.append(stats.one_sample(
                [near - (at_chosen[s]["domain"] - measured[best][s]["domain"]) for s in seeds],
                f"margin {near:.4f} minus (chosen r's domain loss - best other feasible r = {best:.2f})"))
    checks = [stats.Precondition(f"at least {MIN_FIT_SIZES} fitted sizes", len(m["widths"]["fit"]) >= MIN_FIT_SIZES,
                                 f"widths {', '.join(map(str, m['widths']['fit']))}"),
              stats.Precondition(f"D over at least {MIN_D_SPAN:g}x", span >= MIN_D_SPAN, f"D over {span:.1f}x"),
              stats.seed_check({"refits with a fit": len(m["r_stars"]), "chosen ratio at the held-out size":
                                len(at_chosen)})]
    verdict, why = stats.verdict_with(checks, tests)
    return {"verdict": verdict, "why": why, "tests": tests, "limit": limit, "L_g0": L_g0, "span": span,
            "near_margin": near}


def run(ctx: Context) -> Section:
    m = collect(ctx)
    return write(ctx, m, judge(m))


def write(ctx: Context, m: dict[str, Any], j: dict[str, Any]) -> Section:
    seed0 = next(iter(m["fits"]))
    fit0, choice0, points0 = m["fits"][seed0]["fit"], m["fits"][seed0]["choice"], m["points"][seed0]
    held, sizes = m["widths"]["held"], m["sizes"]
    quality = {d: fit_quality(fit0, points0, sizes[d]) for d in (*m["widths"]["fit"], held)} if fit0 else {}
    rows_fit = [[f"d={d}", f"{sizes[d]:,}", "held out" if d == held else "fitted", q["points"],
                 q["general"]["r2"], f"{100 * q['general']['rel_err']:.2f}%", q["domain"]["r2"],
                 f"{100 * q['domain']['rel_err']:.2f}%"] for d, q in quality.items()]
    table = md_table(["width", "N (non-embedding)", "role", "points", "general R^2", "general |err|",
                      "domain R^2", "domain |err|"], rows_fit) + f"\n\n(seed {seed0}'s fit)\n\n" if rows_fit else ""
    rows_r = []
    for r, seeds in m["measured"].items():
        pg, pd = curves(fit0, sizes[held], r, D=m["d_final"]) if fit0 else (math.nan, math.nan)
        g, d = [v["general"] for v in seeds.values()], [v["domain"] for v in seeds.values()]
        rows_r.append([f"{r:.2f}" + (" (chosen)" if m["chosen"] is not None and math.isclose(r, m["chosen"]) else ""),
                       pm(g, 4), "yes" if np.mean(g) <= j["limit"] else "no", float(pg), pm(d, 4), float(pd)])
    table += md_table([f"r at d={held}, D={m['d_final']:,}", "general (measured)", f"<= {j['limit']:.3f}?",
                       "general (law)", "domain (measured)", "domain (law)"], rows_r)
    images = [str(ctx.image(PART, "fit")), str(ctx.image(PART, "ratio"))]
    plot_fit(points0, fit0, sizes[held], images[0])
    plot_ratio(fit0, sizes[held], m["d_final"], j["L_g0"], TOLERANCE, choice0,
               {r: list(x.values()) for r, x in m["measured"].items()}, images[1])
    r_text = (f"r* per refit {', '.join(f'{r:.3f}' for r in m['r_stars'])} ({pm(m['r_stars'])}), run as "
              f"{m['chosen']:.2f}" if m["chosen"] is not None else "no feasible r*")
    why = (f"Rule: t tests over the refits / seeds, Holm-corrected over the sub-claims at level {stats.ALPHA}; "
           f"\"predicts\" is an equivalence test of the mean relative error within ±{100 * EXTRAPOLATION:g}%, "
           f"\"near-optimal\" a non-inferiority test within {100 * NEAR_OPTIMAL:g}% of the measured domain-loss "
           f"range over the ratios. {r_text}. {j['why']}")
    return Section(
        part=PART, title="D-CPT law: extrapolation across model size and the chosen mixture ratio",
        claim=("The D-CPT law L(N, D, r) = E + A/N^alpha + B r^eta/D^beta + C/(r+eps)^gamma, fitted "
               "on small models, predicts the general and domain loss of a larger one, and the "
               "ratio it chooses (lowest predicted domain loss with the general loss within "
               "(1 + T) of its pre-CPT value) is near-optimal."),
        source=("Que et al. 2024, D-CPT Law (arXiv 2406.01375): the law's fit, its generalisation "
                "to unseen model sizes, and its trade-off usage for choosing r"),
        setting=_setting(ctx, m, j), table=table, verdict=j["verdict"], why=why, images=images,
        numbers={"sizes": sizes, "quality": {str(k): v for k, v in quality.items()}, "L_g0": j["L_g0"],
                 "limit": j["limit"], "D_final": m["d_final"], "D_span": j["span"], "r_stars": m["r_stars"],
                 "chosen": m["chosen"], "measured": {str(r): {str(s): v for s, v in x.items()}
                                                     for r, x in m["measured"].items()},
                 "fits": {str(s): None if f["fit"] is None else {k: f["fit"][k]["params"] for k in dcpt.LOSSES}
                          for s, f in m["fits"].items()},
                 "tests": [vars(t) for t in j["tests"]]})


def _setting(ctx: Context, m: dict, j: dict) -> str:
    module, shared, size, w = m["module"], m["shared"], ctx.size, m["widths"]
    tokens = int(shared.train.batch_size) * int(shared.train.seq_len)
    return (f"Widths d = {', '.join(map(str, w['fit']))} fitted, d = {w['held']} held out "
            f"(L={shared.model.num_layers} Pythia, {shared.model.vocab_size:,}-row vocabulary; N counts the "
            f"non-embedding parameters); each base pretrained {module.BASE_STEPS[size]} steps on the five "
            f"general domains (equal shares, cosine to 0.1 eta_max); continuations mix {settings.DOMAIN_A} at "
            f"r in {', '.join(map(str, module.RATIOS[size]))} with the general domains for "
            f"{module.CPT_STEPS[size]} steps (re-warm to {module.CPT_LR:g}, then constant), seeds "
            f"{', '.join(map(str, module.SEEDS))}, evaluated at steps {module.CPT_EVALS[size]} and at the "
            f"end, one law point each (D = steps x {tokens} tokens, over {j['span']:.0f}x). "
            f"T = {TOLERANCE}; L_g0(d={w['held']}) = {j['L_g0']:.4f}; the law is refitted per seed.")
