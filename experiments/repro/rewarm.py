"""Re-warming (Gupta et al. 2023): warmup length, re-warmed peak eta_max, re-warm vs constant LR,
and the stability gap, on a continuation of the shared cosine pretraining onto code_python.

Symbols: T continuation steps, W warmup steps, eta_max the re-warmed peak, eta_0 = 0.1 x the
pretraining peak (where its cosine ended, the re-warm's start). Learning = downstream loss at
step 0 minus at T; forgetting = upstream (mean of the five general domains) loss at T minus at 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cpt_jax.experiment import step0_losses
from experiments.repro import common, settings
from experiments.repro.common import Context, Section, combine, judge, judge_small, md_table, pm, pooled_sd
from experiments.repro.rewarm_plots import plot_gap, plot_peaks, plot_versus, plot_warmups

PART = "rewarm"
UP, DOWN = settings.UPSTREAM, (settings.DOMAIN_A,)


def up_down(losses: dict[str, float]) -> tuple[float, float]:
    """(upstream mean loss, downstream loss) of one eval."""
    return common.mean_loss(losses, UP), common.mean_loss(losses, DOWN)


def trend(values: list[float], noise: float, sign: int) -> str:
    """Verdict on "``values`` grow (sign +1) or shrink (-1) along the arms": the end-to-end
    difference judged against ``noise``; a consecutive step reversed beyond 2 x noise breaks it."""
    verdict = judge(values[-1] - values[0], noise, sign)
    steps = [judge(b - a, noise, sign) for a, b in zip(values, values[1:])]
    return "not reproduced" if verdict == "reproduced" and "not reproduced" in steps else verdict


def stability_gap(curve: dict[int, float]) -> dict[str, float]:
    """Rise of the upstream loss from step 0 to its highest eval before the last, and how much
    of it the run won back by its last eval."""
    steps = sorted(curve)
    start, last = curve[steps[0]], curve[steps[-1]]
    inner = steps[1:-1] or steps[-1:]
    peak_step = max(inner, key=lambda s: curve[s])
    rise = curve[peak_step] - start
    recovery = curve[peak_step] - last
    return {"start": start, "peak_step": peak_step, "peak": curve[peak_step], "last": last,
            "rise": rise, "recovery": recovery, "recovered_frac": recovery / rise if rise > 0 else float("nan")}


def gap_verdict(gap: dict[str, float], noise: float) -> str:
    """Reproduced: the loss rises beyond the noise and wins back more than the noise."""
    rise = judge(gap["rise"], noise, +1)
    return rise if rise != "reproduced" else judge(gap["recovery"], noise, +1)


def run(ctx: Context) -> Section:
    init = ctx.pretrained("cosine")
    shared, runs, summaries = ctx.experiment(PART, extra=[f"train.init_from={init}"])
    T, peak0 = int(shared.train.steps), float(settings.PRETRAIN_LR)
    dirs = {r["name"]: Path(shared.run_dir) / r["name"] for r in runs}
    final = {n: up_down(common.final_losses(d)) for n, d in dirs.items()}
    dense = [r["name"] for r in runs if r.get("set", {}).get("train.eval_steps")]
    start = up_down(step0_losses(summaries[dense[0]]))

    # (a) warmup length: arms w{W}_s{seed} at the pretraining peak
    arms: dict[int, dict[str, list[float]]] = {}
    for r in runs:
        if r["name"].startswith("w"):
            a = arms.setdefault(int(r["set"]["schedule.warmup_steps"]), {"up": [], "down": [], "names": []})
            a["up"].append(final[r["name"]][0])
            a["down"].append(final[r["name"]][1])
            a["names"].append(r["name"])
    noise = {k: pooled_sd([a[k] for a in arms.values()]) for k in ("up", "down")}
    spread = {k: float(np.ptp([np.mean(a[k]) for a in arms.values()])) for k in ("up", "down")}
    v_a = combine(judge_small(spread["up"], noise["up"]), judge_small(spread["down"], noise["down"]))
    diff = {k: math.sqrt(2) * v for k, v in noise.items()}  # noise of a difference of two runs

    # (b) peak: 0.5x, 1x (w1_s0, the 1% arm), 2x, all seed 0
    w_ref = int(shared.schedule.warmup_steps)  # the shared W (1% at full size) of the 1x, peak and dense arms
    ref = f"w{w_ref}_s0"
    peaks = sorted([(float(r["set"]["optim.peak_lr"]) / peak0, r["name"]) for r in runs
                    if r["name"].startswith("peak")] + [(1.0, ref)])
    learn = [start[1] - final[n][1] for _, n in peaks]
    forget = [final[n][0] - start[0] for _, n in peaks]
    v_learn, v_forget = trend(learn, diff["down"], +1), trend(forget, diff["up"], +1)
    v_b = combine(v_learn, v_forget)

    # (c) re-warm (1x) vs the constant final LR, same data order
    c_learn = (start[1] - final[ref][1]) - (start[1] - final["constant"][1])
    c_forget = (final[ref][0] - start[0]) - (final["constant"][0] - start[0])
    v_c_learn, v_c_forget = judge(c_learn, diff["down"], +1), judge(c_forget, diff["up"], +1)
    v_c = combine(v_c_learn, v_c_forget)

    # (d) stability gap on the densely evaluated arms
    curves = {n: common.group_curve(dirs[n], UP) for n in dense}
    down_curves = {n: common.group_curve(dirs[n], DOWN) for n in dense}
    gaps = {n: stability_gap(c) for n, c in curves.items()}
    v_d = gap_verdict(gaps[ref], diff["up"])

    label = {n: f"re-warm {x:g}x" for x, n in peaks} | {"constant": "constant"}
    images = [plot_warmups(arms, T, start, ctx.image(PART, "warmup")),
              plot_peaks(peaks, learn, forget, ctx.image(PART, "peak")),
              plot_versus({label[n]: (curves[n], down_curves[n]) for n in (ref, "constant")},
                          ctx.image(PART, "constant_vs_rewarm")),
              plot_gap({label[n]: curves[n] for n in _ordered(dense, peaks)}, ctx.image(PART, "stability_gap"))]

    rows = [["start (pretrained, step 0)", "", "", "", f"{start[0]:.3f}", f"{start[1]:.3f}", "", ""]]
    for w, a in sorted(arms.items()):
        rows.append([f"(a) W = {w} ({100 * w / T:g}% of T)", f"{peak0:g}", w, len(a["up"]), pm(a["up"]),
                     pm(a["down"]), pm([u - start[0] for u in a["up"]]), pm([start[1] - d for d in a["down"]])])
    for (x, n), lr, fg in zip(peaks, learn, forget):
        rows.append([f"(b) eta_max = {x:g}x", f"{x * peak0:g}", w_ref, 1,
                     f"{final[n][0]:.3f}", f"{final[n][1]:.3f}", f"{fg:.3f}", f"{lr:.3f}"])
    rows.append(["(c) constant final LR", f"{settings.FINAL_LR:g}", "-", 1, f"{final['constant'][0]:.3f}",
                 f"{final['constant'][1]:.3f}", f"{final['constant'][0] - start[0]:.3f}",
                 f"{start[1] - final['constant'][1]:.3f}"])
    table = md_table(["arm", "peak LR", "W", "seeds", "upstream loss", "code_python loss",
                      "forgetting", "learning"], rows)
    g = gaps[ref]
    gap_text = "; ".join(f"{label.get(n, n)} {gaps[n]['rise']:+.3f} at step {gaps[n]['peak_step']}, "
                         f"{gaps[n]['recovery']:.3f} won back" for n in _ordered(dense, peaks))
    why = (
        f"Seed noise (sd of one run over 2 data orders, pooled over the W arms): upstream "
        f"{noise['up']:.4f}, code_python {noise['down']:.4f}; a difference of two runs is judged "
        f"against sqrt(2) x that ({diff['up']:.4f}, {diff['down']:.4f}). "
        f"(b) headline, {v_b}: from eta_max 0.5x to 2x, learning "
        f"{' -> '.join(f'{v:.3f}' for v in learn)} ({v_learn}), forgetting "
        f"{' -> '.join(f'{v:.3f}' for v in forget)} ({v_forget}). "
        f"(a) {v_a}: the spread of the seed-mean final losses across W = {sorted(arms)} is "
        f"{spread['up']:.4f} upstream and {spread['down']:.4f} on code_python, against 2 x the seed noise. "
        f"(c) {v_c}: re-warming to 1x instead of holding the final LR {settings.FINAL_LR:g} learns "
        f"{c_learn:+.3f} more ({v_c_learn}) and forgets {c_forget:+.3f} more ({v_c_forget}); Gupta et al. "
        "found re-warming adapts better downstream and the constant-LR baseline forgets less upstream. "
        f"(d) {v_d}: upstream loss after the switch: {gap_text} (1x arm: {g['start']:.3f} -> "
        f"{g['peak']:.3f} at step {g['peak_step']} -> {g['last']:.3f} at step {T}).")
    numbers: dict[str, Any] = {
        "T": T, "start": {"upstream": start[0], "downstream": start[1]},
        "final": {n: {"upstream": u, "downstream": d} for n, (u, d) in final.items()},
        "noise": noise, "spread": spread, "learning": dict(zip([n for _, n in peaks], learn)),
        "forgetting": dict(zip([n for _, n in peaks], forget)), "constant_vs_rewarm":
        {"learning": c_learn, "forgetting": c_forget}, "gaps": gaps,
        "verdicts": {"a": v_a, "b": v_b, "c": v_c, "d": v_d}}
    return Section(
        part=PART, title="Re-warming the learning rate (Gupta et al. 2023)",
        claim=("Continuing a pretrained model on new data, the warmup length barely matters; a higher "
               "re-warmed peak learns the new domain more and forgets the old one more; re-warming "
               "learns and forgets more than holding the final LR; and the upstream loss first rises "
               "then partly recovers (the stability gap)."),
        source="Gupta et al. 2023, Continual Pre-Training of Large Language Models: How to (re)warm "
               "your model? (Figs. 2-4, 6)",
        setting=(f"the shared cosine pretraining (300 steps on the five general domains, ending at "
                 f"eta = {settings.FINAL_LR:g}) continued {T} steps on code_python only; linear re-warm "
                 f"from {settings.FINAL_LR:g} over W steps, cosine re-decay to 0.1 x eta_max. (a) "
                 f"W = {', '.join(str(w) for w in sorted(arms))} steps at eta_max = {peak0:g}, 2 seeds "
                 "(data orders) each; (b) eta_max = 0.5x, 1x, 2x; (c) the constant final LR; (d) dense "
                 "early evals on the (b) and (c) arms. Upstream loss = mean over the five general domains."),
        table=table, verdict=v_b, why=why, images=[str(p) for p in images], numbers=numbers)


def _ordered(dense: list[str], peaks: list[tuple[float, str]]) -> list[str]:
    """The densely evaluated arms by peak, the constant-LR arm last."""
    order = [n for _, n in peaks] + ["constant"]
    return sorted(dense, key=lambda n: order.index(n) if n in order else len(order))
