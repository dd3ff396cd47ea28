"""D-CPT law (Que et al. 2024): fit ``L(N, D, r)`` on two model sizes, predict a larger one,
and check the ratio the law chooses against measured runs at the held-out size.

    L(N, D, r) = E + A / N**alpha + B * r**eta / D**beta + C / (r + eps)**gamma

Each continuation's evaluations at several steps are ``(N, D, r)`` points (D CPT tokens). The
law is fitted on the ``FIT`` widths (``cpt_jax.dcpt.fit``, held-out rows ``N = N_held``); the
ratio r* (``cpt_jax.dcpt_ratio.best_domain_ratio``) minimises the predicted domain loss with
``L_g <= (1 + T) L_g0`` at the held-out N and the final D, and is then run (two seeds).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cpt_jax import config as config_lib
from cpt_jax import checks, dcpt, experiment
from cpt_jax.dcpt_ratio import best_domain_ratio, curves
from cpt_jax.errors import UserError
from cpt_jax.repro import settings
from cpt_jax.repro.common import (Context, Section, final_losses, group_curve, judge_small,
                                  md_table, mean_loss, mean_sd)
from cpt_jax.repro.dcpt_figures import plot_fit, plot_ratio

PART = "dcpt"
TOLERANCE = 0.03  # T: the general loss may rise by 3% over the pre-CPT loss L_g0
MIN_R2 = 0.9  # held-out R^2 (both losses) the extrapolation must reach
RATIO_STEP = 0.05  # r* is run rounded to this grid, within [RATIO_STEP, 1 - RATIO_STEP]
EXTRA_SEEDS = {"full": (0, 1), "tiny": ()}


def _n_params(cfg) -> int:
    from cpt_jax.model import pythia  # noqa: PLC0415 (jax import on demand)

    return int(pythia.count_params(pythia.PythiaConfig.from_config(cfg.model)))


def collect(shared, runs: list[dict], root: Path) -> tuple[dcpt.Results, dict[int, int]]:
    """Every evaluation (step > 0) of every continuation as a law point; the bases' general
    loss as ``L_g0(N)``. Returns the results and ``{width: N}``."""
    tokens = int(shared.train.batch_size) * int(shared.train.seq_len)
    cols: dict[str, list] = {k: [] for k in dcpt.CSV_COLUMNS}
    pre, sizes = {}, {}
    for run in runs:
        cfg = experiment.run_config(shared, run, root)
        n, folder = _n_params(cfg), root / run["name"]
        sizes[int(cfg.model.hidden_size)] = n
        if not run.get("from"):
            pre[float(n)] = mean_loss(final_losses(folder), settings.UPSTREAM)
            continue
        if int(cfg.seed) != 0:
            continue  # seed repeats measure noise; the law sees seed 0 only
        r = float(checks.comma_list(cfg.data.weights)[0].split("=")[1])
        general = group_curve(folder, settings.UPSTREAM)
        domain = group_curve(folder, [settings.DOMAIN_A])
        for step in sorted(set(general) & set(domain) - {0}):
            for key, value in (("run", f"{run['name']}@{step}"), ("N", n), ("D", step * tokens),
                               ("r", r), ("general_loss", general[step]),
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


def held_out_runs(shared, runs: list[dict], root: Path, held: int) -> dict[float, list[dict]]:
    """``{r: [final {general, domain} per seed]}`` of the continuations of the held-out width."""
    out: dict[float, list[dict]] = {}
    for run in runs:
        cfg = experiment.run_config(shared, run, root)
        if not run.get("from") or int(cfg.model.hidden_size) != held:
            continue
        r = float(checks.comma_list(cfg.data.weights)[0].split("=")[1])
        losses = final_losses(root / run["name"])
        out.setdefault(round(r, 4), []).append(
            {"seed": int(cfg.seed), "general": mean_loss(losses, settings.UPSTREAM),
             "domain": mean_loss(losses, [settings.DOMAIN_A])})
    return dict(sorted(out.items()))


def extrapolates(held: dict, noise: dict) -> dict[str, bool]:
    """Per loss: the held-out R^2 >= MIN_R2, or, where the held-out losses vary too little for
    R^2 to mean anything, a mean absolute error within 2 x the seed noise of that loss."""
    return {k: held[k]["r2"] >= MIN_R2 or held[k]["abs_err"] <= 2 * noise[k] for k in dcpt.LOSSES}


def decide(held: dict | None, chosen: float | None, measured: dict[float, list[dict]],
           limit: float) -> tuple[str, str, dict]:
    """The verdict: both losses extrapolate to the held-out size (:func:`extrapolates`), the
    chosen ratio is measured feasible (general loss <= limit + 2 noise) and its domain loss is
    within 2 x the seed noise of the best measured feasible ratio's (``judge_small``).
    Inconclusive when a number is missing (no fit, no seed repeat, zero noise)."""
    nums: dict = {}
    if held is None:
        return "inconclusive at this scale", "the law could not be fitted on these points.", nums
    fit_text = ", ".join(f"{k} R^2 {held[k]['r2']:.3f}, mean |error| {held[k]['abs_err']:.4f}"
                         for k in dcpt.LOSSES)
    seeds = measured.get(chosen, []) if chosen is not None else []
    if chosen is None or len(seeds) < 2:
        return ("inconclusive at this scale", f"Held-out size: {fit_text}; no seed repeat of a "
                f"chosen ratio to measure the noise.", nums)
    noise = {k: mean_sd([s[k] for s in seeds])[1] for k in dcpt.LOSSES}
    first = {r: next(s for s in v if s["seed"] == 0) for r, v in measured.items()}
    feasible = {r: v for r, v in first.items() if v["general"] <= limit}
    nums.update(noise=noise)
    if not feasible or not (all(map(math.isfinite, noise.values())) and noise["domain"] > 0):
        return ("inconclusive at this scale", f"Held-out size: {fit_text}; no measured ratio keeps "
                f"the general loss within {limit:.3f}, or no seed noise.", nums)
    best = min(feasible, key=lambda r: feasible[r]["domain"])
    gap = first[chosen]["domain"] - feasible[best]["domain"]
    ok_limit = first[chosen]["general"] <= limit + 2 * noise["general"]
    ok_gap = judge_small(max(gap, 0.0), noise["domain"]) == "reproduced"
    ok_fit = extrapolates(held, noise)
    nums.update(best_feasible=best, gap=gap, extrapolates=ok_fit, within_limit=ok_limit)
    verdict = "reproduced" if all(ok_fit.values()) and ok_limit and ok_gap else "not reproduced"
    why = (f"Rule: reproduced when (1) each loss extrapolates to the held-out size (R^2 >= {MIN_R2}, "
           f"or mean |error| <= 2 x its seed noise where the held-out losses vary too little for "
           f"R^2), (2) the chosen ratio's measured general loss is <= (1 + T) L_g0 = {limit:.3f} "
           f"(+ 2 x noise) and (3) its domain loss is within 2 x seed noise of the best measured "
           f"ratio that meets the limit. Held-out size: {fit_text} -> "
           f"{', '.join(k + (' ok' if v else ' fails') for k, v in ok_fit.items())}. Chosen "
           f"r = {chosen:.2f}: general {first[chosen]['general']:.4f} "
           f"({'within' if ok_limit else 'above'} the limit), domain {first[chosen]['domain']:.4f}; "
           f"best measured r meeting the limit = {best:.2f} (domain {feasible[best]['domain']:.4f}); "
           f"gap {gap:+.4f} vs 2 x noise {2 * noise['domain']:.4f}. Noise: sd over seeds "
           f"{', '.join(str(s['seed']) for s in seeds)} at the chosen ratio (domain "
           f"{noise['domain']:.4f}, general {noise['general']:.4f}).")
    return verdict, why, nums


def run(ctx: Context) -> Section:
    path, root = ctx.config_file(PART), ctx.part_dir(PART)
    shared, runs = experiment.load_experiment(path, ctx.overrides(root))
    module = config_lib.load_module(path)
    experiment.run_experiment(shared, runs, log=ctx.log)
    widths = module.WIDTHS[ctx.size]
    fit_sizes, held = widths["fit"], widths["held"]
    results, sizes = collect(shared, runs, root)
    N_held = sizes[held]
    L_g0 = results.pre_cpt_general[float(N_held)]
    limit = (1 + TOLERANCE) * L_g0
    D_final = int(shared.train.batch_size) * int(shared.train.seq_len) * module.CPT_STEPS[ctx.size]
    try:
        fit_json = dcpt.fit(results, holdout=[f"N={N_held}"])
    except UserError as err:
        ctx.log(f"dcpt: no fit ({err})")
        fit_json = None
    choice, chosen = None, None
    if fit_json is not None:
        choice = best_domain_ratio(fit_json, N_held, TOLERANCE, L_g0, D=D_final)
    if choice is not None and EXTRA_SEEDS[ctx.size]:
        chosen = run_ratio(choice.r)
        grid = module.RATIOS[ctx.size]
        seeds = [s for s in EXTRA_SEEDS[ctx.size] if s or not any(math.isclose(chosen, g) for g in grid)]
        extra = module.extra_runs(shared, [chosen], seeds)
        experiment.run_experiment(shared, runs + extra, log=ctx.log)
        runs = runs + extra
    measured = held_out_runs(shared, runs, root, held)
    quality = {d: fit_quality(fit_json, results, sizes[d]) for d in (*fit_sizes, held)} if fit_json else {}
    verdict, why, nums = decide(quality.get(held), chosen, measured, limit)

    rows_fit = [[f"d={d}", f"{sizes[d]:,}", "held out" if d == held else "fitted",
                 q["points"], q["general"]["r2"], f"{100 * q['general']['rel_err']:.2f}%",
                 q["domain"]["r2"], f"{100 * q['domain']['rel_err']:.2f}%"] for d, q in quality.items()]
    table = md_table(["width", "N", "role", "points", "general R^2", "general |err|",
                      "domain R^2", "domain |err|"], rows_fit) if rows_fit else ""
    rows_r = []
    for r, seeds in measured.items():
        pg, pd = (curves(fit_json, N_held, r, D=D_final) if fit_json else (math.nan, math.nan))
        s0 = next(s for s in seeds if s["seed"] == 0)
        each = ", ".join(f"{s['domain']:.4f}" for s in seeds)
        dom = f"{s0['domain']:.4f}" + (f" (seeds {each})" if len(seeds) > 1 else "")
        rows_r.append([f"{r:.2f}" + (" (r*)" if chosen is not None and math.isclose(r, chosen) else ""),
                       f"{s0['general']:.4f}", "yes" if s0["general"] <= limit else "no",
                       float(pg), dom, float(pd)])
    table_r = md_table([f"r at d={held}, D={D_final:,}", "general (measured)",
                        f"<= {limit:.3f}?", "general (law)", "domain (measured)", "domain (law)"], rows_r)
    table = f"{table}\n\n{table_r}" if table else table_r

    images = [str(ctx.image(PART, "fit")), str(ctx.image(PART, "ratio"))]
    plot_fit(results, fit_json, N_held, images[0])
    plot_ratio(fit_json, N_held, D_final, L_g0, TOLERANCE, choice, measured, images[1])
    r_text = (f"r* = {choice.r:.3f} (run as {chosen:.2f})" if choice is not None and chosen is not None
              else f"r* = {choice.r:.3f}" if choice is not None else "no feasible r*")
    return Section(
        part=PART, title="D-CPT law: extrapolation across model size and the chosen mixture ratio",
        claim=("The D-CPT law L(N, D, r) = E + A/N^alpha + B r^eta/D^beta + C/(r+eps)^gamma, fitted "
               "on small models, predicts the general and domain loss of a larger one, and the "
               "ratio it chooses (lowest predicted domain loss with the general loss within "
               "(1 + T) of its pre-CPT value) is near-optimal."),
        source=("Que et al. 2024, D-CPT Law (arXiv 2406.01375): the law's fit, its generalisation "
                "to unseen model sizes, and its trade-off usage for choosing r"),
        setting=_setting(ctx, shared, module, L_g0, r_text),
        table=table, verdict=verdict, why=why, images=images,
        numbers={"sizes": sizes, "quality": {str(k): v for k, v in quality.items()},
                 "L_g0": L_g0, "limit": limit, "D_final": D_final,
                 "r_star": None if choice is None else choice.r, "chosen": chosen,
                 "measured": {str(k): v for k, v in measured.items()},
                 "fit": None if fit_json is None else {k: fit_json[k]["params"] for k in dcpt.LOSSES},
                 **nums})


def _setting(ctx: Context, shared, module, L_g0: float, r_text: str) -> str:
    w, size = module.WIDTHS[ctx.size], ctx.size
    tokens = int(shared.train.batch_size) * int(shared.train.seq_len)
    return (f"Widths d = {', '.join(map(str, w['fit']))} fitted, d = {w['held']} held out "
            f"(L={shared.model.num_layers} Pythia, {shared.model.vocab_size:,}-row vocabulary); each "
            f"base pretrained {module.BASE_STEPS[size]} steps on the five general domains (equal "
            f"shares, cosine to 0.1 eta_max); continuations mix {settings.DOMAIN_A} at r in "
            f"{', '.join(map(str, module.RATIOS[size]))} with the general domains for "
            f"{module.CPT_STEPS[size]} steps (re-warm to {module.CPT_LR:g}, then constant), evaluated "
            f"at step(s) {module.CPT_EVALS[size]} and at the end, one law point each (D = steps x "
            f"{tokens} tokens). T = {TOLERANCE}; L_g0(d={w['held']}) = {L_g0:.4f}; {r_text}; "
            f"the chosen ratio is run with seed(s) {', '.join(map(str, EXTRA_SEEDS[size])) or 'none'}.")
