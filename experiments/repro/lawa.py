"""LAWA (Kaddour 2022; Sanyal et al. 2023): does the average of the k latest checkpoints beat the
latest one, most early in training and at a high learning rate?

Per eval step t the gain is ``g_t = L(theta_t) - L(theta_bar_t)`` (mean held-out loss over the
general domains; > 0: LAWA better), with ``theta_bar_t = (1/k) sum_{i<k} theta_{t - i nu}``. Only
evals whose window ``(k - 1) nu`` is 3-17% of the steps so far count (the paper's range). Per seed,
early = mean g over the counted evals in the first half of training, late = over the second half.
Three sub-claims, t tests over seeds (paired by seed where arms share one), Holm-corrected:
LAWA gains early at the high LR; the gain early exceeds the gain late (high LR, under the cosine
decay); and the early gain at the high LR exceeds that at the low LR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cpt_jax.eval.report_plots import pyplot, save_figure
from experiments.repro import stats
from experiments.repro.common import Context, Section, eval_curve, md_table, pm

PART = "lawa"
WINDOW_RANGE = (0.03, 0.17)  # (k - 1) nu / t, the paper's windows


def gains(run_dir: str | Path) -> dict[int, float]:
    """``{step: raw - LAWA}`` mean held-out loss, at every eval with a full LAWA window."""
    raw, avg = eval_curve(run_dir), eval_curve(run_dir, "eval_lawa/avg/loss")
    return {s: raw[s] - avg[s] for s in sorted(avg) if s in raw}


def counted(g: dict[int, float], window: int) -> dict[int, float]:
    """The gains at evals whose window is within ``WINDOW_RANGE`` of the steps so far."""
    lo, hi = WINDOW_RANGE
    return {s: v for s, v in g.items() if s > 0 and lo <= window / s <= hi}


def halves(g: dict[int, float], steps: int) -> tuple[float, float]:
    """Mean gain over the evals of the first half (step <= steps / 2) and of the second."""
    early = [v for s, v in g.items() if s <= steps / 2]
    late = [v for s, v in g.items() if s > steps / 2]
    return (float(np.mean(early)) if early else np.nan), (float(np.mean(late)) if late else np.nan)


def collect(ctx: Context) -> dict[str, Any]:
    """Train (or re-read) both LRs x seeds; every run's gains and its counted gains."""
    shared, runs, _ = ctx.experiment(PART)
    steps, window = int(shared.train.steps), (int(shared.lawa.k) - 1) * int(shared.lawa.every)
    part = ctx.part_dir(PART)
    out: dict[str, dict[int, dict]] = {}
    for r in runs:
        arm, seed = r["name"].rsplit("_s", 1)
        g = gains(part / r["name"])
        out.setdefault(arm, {})[int(seed)] = {"lr": float(r["set"]["optim.peak_lr"]), "gains": g,
                                              "counted": counted(g, window), "dir": str(part / r["name"])}
    return {"steps": steps, "window": window, "k": int(shared.lawa.k), "every": int(shared.lawa.every),
            "schedule": str(shared.schedule.name), "min_lr_ratio": float(shared.schedule.min_lr_ratio),
            "eval_every": int(shared.train.eval_every), "arms": out}


def judge(m: dict[str, Any]) -> dict[str, Any]:
    """Preconditions (window 3-17% of the steps so far, a decaying schedule, 3 seeds) and the
    three sub-claims."""
    h = {arm: {s: halves(v["counted"], m["steps"]) for s, v in seeds.items()} for arm, seeds in m["arms"].items()}
    seeds = sorted(set(h["high"]) & set(h["low"]))
    early = {a: [h[a][s][0] for s in seeds] for a in h}
    late = {a: [h[a][s][1] for s in seeds] for a in h}
    tests = [stats.one_sample(early["high"], "gain early, high LR"),
             stats.paired(early["high"], late["high"], "gain early minus late, high LR"),
             stats.paired(early["high"], early["low"], "early gain, high minus low LR")]
    steps_counted = sorted(next(iter(m["arms"]["high"].values()))["counted"])
    n_early = sum(s <= m["steps"] / 2 for s in steps_counted)
    fracs = [m["window"] / s for s in steps_counted] or [np.nan]
    decays = m["schedule"] in ("cosine", "linear") and m["min_lr_ratio"] <= 0.5
    checks = [
        stats.Precondition("LAWA window 3-17% of the steps so far at every counted eval, evals in both "
                           "halves", n_early >= 2 and len(steps_counted) - n_early >= 2,
                           f"window {m['window']} steps = {100 * max(fracs):.1f}% .. {100 * min(fracs):.1f}% "
                           f"at steps {steps_counted[0] if steps_counted else '-'}..{m['steps']}; "
                           f"{n_early} early, {len(steps_counted) - n_early} late evals"),
        stats.Precondition("a decaying schedule", decays,
                           f"{m['schedule']}, final LR {m['min_lr_ratio']:g} x peak"),
        stats.seed_check({a: len(v) for a, v in m["arms"].items()})]
    verdict, why = stats.verdict_with(checks, tests)
    return {"early": early, "late": late, "seeds": seeds, "tests": tests, "verdict": verdict, "why": why}


def run(ctx: Context) -> Section:
    m = collect(ctx)
    return write(ctx, m, judge(m))


def _plot(path: Path, m: dict) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, (arm, seeds) in enumerate(m["arms"].items()):
        lr = next(iter(seeds.values()))["lr"]
        raw = [eval_curve(v["dir"]) for v in seeds.values()]
        avg = [eval_curve(v["dir"], "eval_lawa/avg/loss") for v in seeds.values()]
        for curves, ls, what in ((raw, "-", "latest"), (avg, "--", "LAWA")):
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ax[0].plot(steps, [np.mean([c[s] for c in curves]) for s in steps], ls, color=f"C{i}",
                       label=f"{what}, LR {lr:g}")
        steps = sorted(set.intersection(*(set(v["gains"]) for v in seeds.values())))
        g = np.array([[v["gains"][s] for s in steps] for v in seeds.values()])
        ax[1].errorbar(steps, g.mean(0), yerr=g.std(0, ddof=1) if len(g) > 1 else None, fmt="-o", ms=3,
                       capsize=2, color=f"C{i}", label=f"LR {lr:g} (mean ± sd over seeds)")
    lo, hi = WINDOW_RANGE
    ax[1].axvspan(m["window"] / hi, m["steps"], color="green", alpha=0.08, label="window 3-17% of the steps")
    ax[1].axvline(m["steps"] / 2, color="gray", lw=0.8, ls=":", label="early | late")
    ax[1].axhline(0, color="k", lw=0.8)
    ax[0].set(xlabel="training step", ylabel="mean held-out loss, 5 general domains (nats)",
              title="latest checkpoint vs LAWA average (seed mean)")
    ax[1].set(xlabel="training step", ylabel="gain: latest - LAWA loss (nats; > 0: LAWA better)",
              title="LAWA's gain over training")
    for a in ax:
        a.legend(fontsize=8)
    fig.suptitle("LAWA (k latest checkpoints averaged) at a high and a low peak LR, cosine schedule")
    return save_figure(fig, path)


def write(ctx: Context, m: dict[str, Any], j: dict[str, Any]) -> Section:
    steps = m["steps"]
    rows = [(f"{next(iter(m['arms'][a].values()))['lr']:g}", len(j["early"][a]), pm(j["early"][a], 4),
             pm(j["late"][a], 4)) for a in m["arms"]]
    table = md_table(["peak LR", "seeds", f"gain, counted evals <= step {steps // 2}",
                      f"gain, evals > step {steps // 2}"], rows)
    table += ("\n\nGain = latest - LAWA mean held-out loss (nats), per seed the mean over the counted evals; "
              "mean ± sd over seeds.")
    image = _plot(ctx.image(PART, "gain"), m)
    why = (f"Rule: t tests over the seeds {', '.join(map(str, j['seeds']))} (the two LRs paired by seed), "
           f"Holm-corrected across the three sub-claims at level {stats.ALPHA}. {j['why']}")
    setting = (f"a tiny Pythia trained from scratch on the five general domains (equal shares) for {steps} "
               f"steps with Pythia's cosine schedule (1% warmup, decay to {m['min_lr_ratio']:g} x the peak) at a "
               f"peak LR of {m['arms']['high'][0]['lr']:g} (high) or {m['arms']['low'][0]['lr']:g} (low), "
               f"{len(m['arms']['high'])} seeds each; online LAWA with k = {m['k']} snapshots every nu = "
               f"{m['every']} steps (window {m['window']} steps); every {m['eval_every']} steps the latest "
               "parameters and their LAWA average are scored on the same held-out batches, and the evals "
               "where the window is 3-17% of the steps so far are counted.")
    return Section(
        part=PART, title="LAWA helps most early and at a high learning rate",
        claim=("Averaging the k latest checkpoints (LAWA) gives a lower loss than the latest checkpoint; the "
               "gain is largest early in training and with a high learning rate, and shrinks when the "
               "learning rate is low or decayed."),
        source=("Sanyal et al. 2023, Early Weight Averaging meets High Learning Rates for LLM Pre-training "
                "(arXiv:2306.03241): abstract and the nanoGPT-2 high- vs low-LR runs"),
        setting=setting, table=table, verdict=j["verdict"], why=why, images=[str(image)],
        numbers={"early": j["early"], "late": j["late"], "window": m["window"],
                 "gains": {a: {str(s): {str(k): x for k, x in v["gains"].items()} for s, v in seeds.items()}
                           for a, seeds in m["arms"].items()},
                 "tests": [vars(t) for t in j["tests"]]})
