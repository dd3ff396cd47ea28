"""Replay and the infinite schedule (Ibrahim et al. 2024).

Claim 1: replaying a share f of old (upstream) data while continuing on a new domain cuts the
forgetting F = L_up(end) - L_up(0) as f grows, at a small cost in the new domain's loss L_A.
Claim 2: an infinite schedule (constant eta_const across tasks, a short anneal only for a
deployable checkpoint) matches cosine re-warming over two successive new domains.
Runs: ``configs/repro_replay.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cpt_jax.run_dir import RunDir
from experiments.repro import common, settings
from experiments.repro.common import Context, Section, pooled_sd
from experiments.repro.replay_plots import plot_chains, plot_replay

PART = "replay"
A, B, UP = settings.DOMAIN_A, settings.DOMAIN_B, settings.UPSTREAM


# ---- reading runs ------------------------------------------------------------------------

def endpoints(run_dir: str | Path) -> dict[str, tuple[float, float]]:
    """``{group: (loss at step 0, final loss)}`` for groups up (upstream mean), A and B."""
    out = {}
    for group, domains in (("up", UP), ("A", (A,)), ("B", (B,))):
        curve = common.group_curve(run_dir, domains)
        out[group] = (curve.get(0, math.nan), curve[max(curve)] if curve else math.nan)
    return out


# ---- claim 1 -----------------------------------------------------------------------------

def replay_analysis(arms: dict[float, list[dict[str, tuple[float, float]]]]) -> dict[str, Any]:
    """Forgetting F = up(end) - up(0) and learning L_A(end) per replay share f (one entry per
    seed), the seed noise, and per f > 0: the forgetting saved F(0) - F(f) and the learning
    cost L_A(f) - L_A(0), each with the noise of a difference of arm means,
    sd * sqrt(1/n_0 + 1/n_f)."""
    shares = sorted(arms)
    forget = {f: [e["up"][1] - e["up"][0] for e in arms[f]] for f in shares}
    learn = {f: [e["A"][1] for e in arms[f]] for f in shares}
    sd_f, sd_l = pooled_sd(list(forget.values())), pooled_sd(list(learn.values()))
    base = shares[0]
    diffs = {}
    for f in shares[1:]:
        k = math.sqrt(1 / len(arms[base]) + 1 / len(arms[f]))
        diffs[f] = {"saved": np.mean(forget[base]) - np.mean(forget[f]), "saved_noise": sd_f * k,
                    "cost": np.mean(learn[f]) - np.mean(learn[base]), "cost_noise": sd_l * k}
    return {"forget": forget, "learn": learn, "sd_forget": sd_f, "sd_learn": sd_l, "diffs": diffs}


def replay_verdict(an: dict[str, Any]) -> tuple[str, str, str]:
    """(verdict, forgetting verdict, cost verdict). Forgetting: the saving at the largest share
    against its noise (``judge``, expected sign +). Cost "small": at every share the learning
    cost stays below the forgetting saved plus twice the cost's noise. The claim holds when both
    do; it fails when the saving has the wrong sign or the cost is not small."""
    top = max(an["diffs"])
    d = an["diffs"][top]
    v_forget = common.judge(d["saved"], d["saved_noise"], +1)
    small = all(x["cost"] < x["saved"] + 2 * x["cost_noise"] for x in an["diffs"].values())
    v_cost = "reproduced" if small else "not reproduced"
    if v_forget != "reproduced":
        return v_forget, v_forget, v_cost
    return v_cost, v_forget, v_cost


# ---- claim 2 -----------------------------------------------------------------------------

def chain_verdict(cos: dict[str, float], inf: dict[str, float], noise: float) -> tuple[str, str]:
    """(match verdict, forgets-less verdict) at the end of the chain. Match: the annealed
    infinite model is nowhere worse than the cosine chain by more than 2 x noise (every group);
    forgets less: ``judge`` on L_up(cosine) - L_up(infinite)."""
    worst = max(inf[g] - cos[g] for g in cos)
    match = "reproduced" if worst <= 2 * noise else "not reproduced"
    if not math.isfinite(worst + noise):
        match = "inconclusive at this scale"
    return match, common.judge(cos["up"] - inf["up"], noise, +1)


# ---- the section ---------------------------------------------------------------------------

def _share(run: dict) -> float:
    return float(run.get("set", {}).get("data.replay_fraction", 0.0))


def run(ctx: Context) -> Section:
    pre_steps = RunDir(ctx.pretrained("cosine")).read_json("config.json")["train"]["steps"]
    ctx.pretrained("infinite")
    shared, runs, _ = ctx.experiment(PART)
    root = ctx.part_dir(PART)
    ends = {r["name"]: endpoints(root / r["name"]) for r in runs}
    arms: dict[float, list] = {}
    for r in runs:
        if r["name"].startswith("rep"):
            arms.setdefault(_share(r), []).append(ends[r["name"]])
    an = replay_analysis(arms)
    verdict, v_forget, v_cost = replay_verdict(an)

    final = {n: {g: e[g][1] for g in e} for n, e in ends.items()}
    sd_up = pooled_sd([[e["up"][1] for e in v] for v in arms.values()])
    noise2 = math.sqrt(2) * max(sd_up, an["sd_learn"])  # one run per chain: a difference of two runs
    match_a, _ = chain_verdict(final["rep0_s0"], final["inf_A_anneal"], noise2)
    match, less = chain_verdict(final["cos_B"], final["inf_B_anneal"], noise2)

    s, n_ann = shared.train.steps, _anneal_steps(runs)
    images = [str(plot_replay(an, ctx.image(PART, "forgetting"))),
              str(plot_chains(root, ctx.image(PART, "infinite")))]
    table = _tables(an, arms, final, ends, s)
    f1 = min(an["diffs"])
    d1, dt = an["diffs"][f1], an["diffs"][max(an["diffs"])]
    costs = ", ".join(f"{_pct(f)}%: {d['cost']:+.3f}" for f, d in an["diffs"].items())
    why = (
        f"Claim 1 (replay): forgetting F = upstream loss rise falls from {np.mean(an['forget'][0.0]):.3f} "
        f"with no replay to {np.mean(an['forget'][max(arms)]):.3f} at {_pct(max(arms))}% replay, a saving of "
        f"{dt['saved']:.3f} against a noise of {dt['saved_noise']:.3f} ({v_forget}); seed sd of F "
        f"{an['sd_forget']:.3f} and of the {A} loss {an['sd_learn']:.3f} (pooled over the arms run with "
        f"2 seeds). The {A} loss it costs is {costs} "
        f"(small = below the forgetting saved + 2 x noise at every share: {v_cost}). "
        f"At {_pct(f1)}% replay the saving is {d1['saved']:+.3f} ± {d1['saved_noise']:.3f} "
        f"({common.judge(d1['saved'], d1['saved_noise'], +1)} on its own). "
        f"Claim 2 (infinite schedule): after both domains the annealed infinite model vs the cosine "
        f"chain: upstream {final['inf_B_anneal']['up']:.3f} vs {final['cos_B']['up']:.3f}, {A} "
        f"{final['inf_B_anneal']['A']:.3f} vs {final['cos_B']['A']:.3f}, {B} "
        f"{final['inf_B_anneal']['B']:.3f} vs {final['cos_B']['B']:.3f} (noise of a difference of "
        f"two runs {noise2:.3f} = sqrt 2 x the larger seed sd above, also used for {B}, which has no "
        f"seed estimate of its own): matches cosine re-warming (nowhere "
        f"worse by more than 2 x noise): **{match}** (after the first domain alone: {match_a}); forgets "
        f"less: {less} (the infinite pretraining started {ends['inf_A']['up'][0] - ends['rep0_s0']['up'][0]:+.3f} "
        f"from the cosine one upstream). Without its anneal the infinite model ends at {B} "
        f"{final['inf_B']['B']:.3f}: at this scale the new domain is still far from converged, and "
        f"the anneal's lower LR learns it more slowly."
    )
    return Section(
        part=PART, title="Replay and the infinite schedule",
        claim=("Replaying a small share of old data while continuing on new data (compute-equivalent: "
               "replayed tokens replace new ones) cuts forgetting at a small cost in learning; and an "
               "infinite learning-rate schedule (constant LR across tasks, a short anneal only when a "
               "checkpoint is deployed) matches cosine re-warming + re-decaying over successive tasks."),
        source="Ibrahim et al. 2024, Simple and Scalable Strategies to Continually Pre-train Large "
               "Language Models (the compute-equivalent replay sweeps; the infinite learning-rate schedules)",
        setting=(f"from the cosine pretraining ({pre_steps} steps on the five upstream domains), {s} steps on "
                 f"{A}, re-warming from {settings.FINAL_LR:g} to {settings.PRETRAIN_LR:g} (linear, "
                 f"{shared.schedule.warmup_steps} steps) and re-decaying (cosine), with "
                 f"{'/'.join(_pct(f) for f in sorted(arms))}% of the sequences replayed from the upstream "
                 f"mix (a quota exact over steps); seeds 0 and 1 (data order) for the "
                 f"{' and '.join(_pct(f) + '%' for f in sorted(arms) if len(arms[f]) > 1)} arms. Then {s} more "
                 f"steps on {B}: the cosine chain re-warms again; the infinite chain (pretraining: warmup, "
                 f"cooldown to eta_const = 0.5 eta_max, constant) holds eta_const with no re-warm and, for "
                 f"evaluation, anneals a branch off step {s - n_ann} of each stage over its last {n_ann} "
                 f"steps to {settings.FINAL_LR:g}, so annealed and cosine models have seen the same tokens."),
        table=table, verdict=verdict, why=why, images=images,
        numbers={"forget": an["forget"], "learn": an["learn"], "sd_forget": an["sd_forget"],
                 "sd_learn": an["sd_learn"], "diffs": an["diffs"], "final": final, "noise2": noise2,
                 "claim2": match, "claim2_forgets_less": less},
    )


def _anneal_steps(runs: list[dict]) -> int:
    return int(next(r["set"]["train.steps"] for r in runs if r["name"].endswith("_anneal")))


def _pct(f: float) -> str:
    return f"{100 * f:g}"


def _tables(an: dict, arms: dict, final: dict, ends: dict, s: int) -> str:
    rows = []
    for f in sorted(arms):
        d = an["diffs"].get(f)
        rows.append([f"{_pct(f)}%", len(arms[f]), common.pm(an["forget"][f]), common.pm(an["learn"][f]),
                     "" if d is None else f"{d['saved']:+.3f} ± {d['saved_noise']:.3f}",
                     "" if d is None else f"{d['cost']:+.3f} ± {d['cost_noise']:.3f}"])
    t1 = common.md_table(["claim 1: replay", "seeds", "forgetting F (upstream loss rise)", f"{A} loss (learning)",
                          "F saved vs 0%", f"{A} cost vs 0%"], rows)
    chain = [("pretrained (start)", "rep0_s0", 0, "inf_A", 0),
             (f"after {A} ({s} steps)", "rep0_s0", 1, "inf_A_anneal", 1),
             (f"after {B} ({2 * s} steps)", "cos_B", 1, "inf_B_anneal", 1)]
    rows2 = []
    for label, cos, ci, inf, ii in chain:
        for name, run, i in (("cosine re-warm", cos, ci), ("infinite" + (" + anneal" if ii and ci else ""), inf, ii)):
            e = ends[run]
            rows2.append([label, name, e["up"][i], e["A"][i], e["B"][i]])
    for stage in ("inf_A", "inf_B"):
        rows2.append([f"end of {stage} (no anneal)", "infinite, eta_const",
                      *[final[stage][g] for g in ("up", "A", "B")]])
    t2 = common.md_table(["claim 2: point", "schedule", "upstream loss", f"{A} loss", f"{B} loss"], rows2)
    return f"{t1}\n\n{t2}"
