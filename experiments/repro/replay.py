"""Replay and the infinite schedule (Ibrahim et al. 2024).

Claim 1: replaying a share f of old (upstream) data while continuing on a new domain cuts the
forgetting F = L_up(end) - L_up(0) as f grows, at a small cost in the new domain's loss L_A.
Claim 2: an infinite schedule (constant eta_const across tasks, a short anneal only for a
deployable checkpoint) matches cosine re-warming over two successive new domains.
Runs: ``configs/repro_replay.py``; every arm and both chains run the same seeds, so every
comparison is a paired t test over seeds; "small" and "matches" are equivalence tests within
``EQUIVALENCE`` of what the continuation learns.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cpt_jax.run_dir import RunDir
from experiments.repro import common, settings, stats
from experiments.repro.common import Context, Section
from experiments.repro.replay_plots import plot_chains, plot_replay

PART = "replay"
A, B, UP = settings.DOMAIN_A, settings.DOMAIN_B, settings.UPSTREAM
EQUIVALENCE = 0.1  # "small" / "matches": within 10% of the new domain's learning


# ---- reading runs ------------------------------------------------------------------------

def endpoints(run_dir: str | Path) -> dict[str, tuple[float, float]]:
    """``{group: (loss at step 0, final loss)}`` for groups up (upstream mean), A and B."""
    out = {}
    for group, domains in (("up", UP), ("A", (A,)), ("B", (B,))):
        curve = common.group_curve(run_dir, domains)
        out[group] = (curve.get(0, math.nan), curve[max(curve)] if curve else math.nan)
    return out


# ---- collect ---------------------------------------------------------------------------

def _share(run: dict) -> float:
    return float(run.get("set", {}).get("data.replay_fraction", 0.0))


def collect(ctx: Context) -> dict[str, Any]:
    """Train (or re-read) the replay arms and both chains; every run's endpoints by arm and seed."""
    pre_steps = RunDir(ctx.pretrained("cosine")).read_json("config.json")["train"]["steps"]
    ctx.pretrained("infinite")
    shared, runs, _ = ctx.experiment(PART)
    root = ctx.part_dir(PART)
    by_arm: dict[str, dict[int, dict]] = {}
    shares: dict[str, float] = {}
    for r in runs:
        arm, seed = r["name"].rsplit("_s", 1)
        by_arm.setdefault(arm, {})[int(seed)] = endpoints(root / r["name"])
        if arm.startswith("rep"):
            shares[arm] = _share(r)
    return {"ends": by_arm, "shares": shares, "root": root, "pre_steps": pre_steps,
            "steps": int(shared.train.steps), "warmup": int(shared.schedule.warmup_steps),
            "n_ann": _anneal_steps(runs)}


# ---- judge -------------------------------------------------------------------------------

def _values(m: dict, arm: str, fn) -> list[float]:
    return [fn(e) for _, e in sorted(m["ends"][arm].items())]


def replay_analysis(m: dict[str, Any]) -> dict[str, Any]:
    """Forgetting F = up(end) - up(0) and the new domain's final loss per share and seed."""
    arms = sorted(m["shares"], key=m["shares"].get)
    forget = {m["shares"][a]: _values(m, a, lambda e: e["up"][1] - e["up"][0]) for a in arms}
    learn = {m["shares"][a]: _values(m, a, lambda e: e["A"][1]) for a in arms}
    gained = _values(m, arms[0], lambda e: e["A"][0] - e["A"][1])  # what the 0% arm learns on A
    return {"arms": arms, "forget": forget, "learn": learn, "learned": gained}


def judge(m: dict[str, Any]) -> dict[str, Any]:
    """Claim 1 (replay cuts forgetting, small cost) and claim 2 (the annealed infinite chain
    matches the cosine chain on every group), each a Holm family of paired tests."""
    an = replay_analysis(m)
    shares = sorted(an["forget"])
    margin1 = EQUIVALENCE * float(np.mean(an["learned"]))
    t1 = [stats.paired(an["forget"][0.0], an["forget"][f], f"forgetting saved at {_pct(f)}%") for f in shares[1:]]
    t1.append(stats.paired(an["learn"][shares[-1]], an["learn"][0.0], f"{A} loss cost at {_pct(shares[-1])}%",
                           margin=margin1))
    seeds = stats.seed_check({a: len(v) for a, v in m["ends"].items()})
    forgets = stats.Precondition("the continuation forgets", float(np.mean(an["forget"][0.0])) > 0,
                                 f"F at 0% replay {common.pm(an['forget'][0.0])}")
    v1, why1 = stats.verdict_with([seeds, forgets], t1)
    learned_b = _values(m, "cos_B", lambda e: e["B"][0] - e["B"][1])
    margin2 = EQUIVALENCE * float(np.mean(learned_b))
    t2 = [stats.paired(_values(m, "inf_B_anneal", lambda e, g=g: e[g][1]), _values(m, "cos_B", lambda e, g=g: e[g][1]),
                       f"{name} loss, infinite + anneal minus cosine", margin=margin2)
          for g, name in (("up", "upstream"), ("A", A), ("B", B))]
    v2, why2 = stats.verdict_with([seeds], t2)
    return {"an": an, "claim1": (v1, why1, t1), "claim2": (v2, why2, t2), "margins": (margin1, margin2)}


def run(ctx: Context) -> Section:
    m = collect(ctx)
    return write(ctx, m, judge(m))


# ---- write -------------------------------------------------------------------------------

def write(ctx: Context, m: dict[str, Any], j: dict[str, Any]) -> Section:
    an, (v1, why1, t1), (v2, why2, t2) = j["an"], j["claim1"], j["claim2"]
    s, n_ann = m["steps"], m["n_ann"]
    images = [str(plot_replay(an, ctx.image(PART, "forgetting"))),
              str(plot_chains(m["root"], ctx.image(PART, "infinite")))]
    why = (f"Paired t tests over the seeds, Holm-corrected within each claim (level {stats.ALPHA}); a cost "
           f"is small and a chain matches when the difference is within ±{j['margins'][0]:.4f} nats (claim 1) "
           f"or ±{j['margins'][1]:.4f} nats (claim 2), {100 * EQUIVALENCE:g}% of what the continuation learns "
           f"on the new domain (two one-sided tests). Claim 1 (replay), **{v1}**: {why1} Claim 2 (infinite "
           f"schedule), {v2}: {why2} Without its anneal the infinite model ends at {B} "
           f"{common.pm(_values(m, 'inf_B', lambda e: e['B'][1]))}.")
    shares = "/".join(_pct(f) for f in sorted(an["forget"]))
    seeds = ", ".join(map(str, sorted(next(iter(m["ends"].values())))))
    return Section(
        part=PART, title="Replay and the infinite schedule",
        claim=("Replaying a small share of old data while continuing on new data (compute-equivalent: "
               "replayed tokens replace new ones) cuts forgetting at a small cost in learning; and an "
               "infinite learning-rate schedule (constant LR across tasks, a short anneal only when a "
               "checkpoint is deployed) matches cosine re-warming + re-decaying over successive tasks."),
        source="Ibrahim et al. 2024, Simple and Scalable Strategies to Continually Pre-train Large "
               "Language Models (the compute-equivalent replay sweeps; the infinite learning-rate schedules)",
        setting=(f"from the cosine pretraining ({m['pre_steps']} steps on the five upstream domains), {s} steps on "
                 f"{A}, re-warming from {settings.FINAL_LR:g} to {settings.PRETRAIN_LR:g} (linear, "
                 f"{m['warmup']} steps) and re-decaying (cosine), with {shares}% of the sequences replayed "
                 f"from the upstream mix (a quota exact over steps). Then {s} more steps on {B}: the cosine "
                 f"chain re-warms again; the infinite chain (pretraining: warmup, cooldown to eta_const = "
                 f"0.5 eta_max, constant) holds eta_const with no re-warm and, for evaluation, anneals a "
                 f"branch off step {s - n_ann} of each stage over its last {n_ann} steps to "
                 f"{settings.FINAL_LR:g}, so annealed and cosine models have seen the same tokens. Every arm "
                 f"and both chains: seeds {seeds}."),
        table=_tables(m, j), verdict=v1, why=why, images=images,
        numbers={"forget": an["forget"], "learn": an["learn"], "margins": j["margins"],
                 "ends": {a: {str(k): v for k, v in x.items()} for a, x in m["ends"].items()},
                 "verdicts": {"claim1": v1, "claim2": v2},
                 "tests": {"claim1": [vars(t) for t in t1], "claim2": [vars(t) for t in t2]}},
    )


def _anneal_steps(runs: list[dict]) -> int:
    return int(next(r["set"]["train.steps"] for r in runs if "_anneal" in r["name"]))


def _pct(f: float) -> str:
    return f"{100 * f:g}"


def _tables(m: dict, j: dict) -> str:
    an = j["an"]
    rows = []
    for f in sorted(an["forget"]):
        rows.append([f"{_pct(f)}%", len(an["forget"][f]), common.pm(an["forget"][f]), common.pm(an["learn"][f])])
    t1 = common.md_table(["claim 1: replay", "seeds", "forgetting F (upstream loss rise)", f"{A} loss"], rows)
    points = [("pretrained (start)", "rep0", 0, "inf_A", 0), (f"after {A}", "rep0", 1, "inf_A_anneal", 1),
              (f"after {B}", "cos_B", 1, "inf_B_anneal", 1), (f"after {B}, no anneal", None, 1, "inf_B", 1)]
    rows2 = []
    for label, cos, ci, inf, ii in points:
        for name, arm, i in (("cosine re-warm", cos, ci), ("infinite", inf, ii)):
            if arm is not None:
                cells = [common.pm(_values(m, arm, lambda e, g=g, i=i: e[g][i])) for g in ("up", "A", "B")]
                rows2.append([label, name, *cells])
    t2 = common.md_table(["claim 2: point", "schedule", "upstream loss", f"{A} loss", f"{B} loss"], rows2)
    return f"{t1}\n\n{t2}\n\nValues are mean ± sd over the seeds."
