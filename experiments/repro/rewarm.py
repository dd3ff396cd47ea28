"""Re-warming (Gupta et al. 2023): warmup length, re-warmed peak eta_max, re-warm vs constant LR,
and the stability gap, on a continuation of the shared cosine pretraining onto code_python.

Symbols: T continuation steps, W warmup steps, eta_max the re-warmed peak, eta_0 = 0.1 x the
pretraining peak (where its cosine ended, the re-warm's start). Learning = downstream loss at
step 0 minus at T; forgetting = upstream (mean of the five general domains) loss at T minus at 0.
Every arm runs the same seeds (data orders), so arms are compared seed by seed (paired t tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cpt_jax.experiment import step0_losses
from experiments.repro import common, settings, stats
from experiments.repro.common import Context, Section, md_table, pm
from experiments.repro.rewarm_plots import plot_gap, plot_peaks, plot_versus, plot_warmups

PART = "rewarm"
UP, DOWN = settings.UPSTREAM, (settings.DOMAIN_A,)
EQUIVALENCE = 0.1  # "barely matters": within 10% of what the 1x continuation learns


def up_down(losses: dict[str, float]) -> tuple[float, float]:
    """(upstream mean loss, downstream loss) of one eval."""
    return common.mean_loss(losses, UP), common.mean_loss(losses, DOWN)


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


def arm_of(name: str) -> tuple[str, int]:
    """``("w10", 2)`` of run ``w10_s2``."""
    arm, seed = name.rsplit("_s", 1)
    return arm, int(seed)


def collect(ctx: Context) -> dict[str, Any]:
    """Train (or re-read) every arm; per arm and seed the final (upstream, downstream) losses,
    the dense upstream/downstream curves, and the step-0 losses."""
    init = ctx.pretrained("cosine")
    shared, runs, summaries = ctx.experiment(PART, extra=[f"train.init_from={init}"])
    root = Path(shared.run_dir)
    final: dict[str, dict[int, tuple[float, float]]] = {}
    curves: dict[str, dict[int, tuple[dict, dict]]] = {}
    for r in runs:
        arm, seed = arm_of(r["name"])
        final.setdefault(arm, {})[seed] = up_down(common.final_losses(root / r["name"]))
        if r.get("set", {}).get("train.eval_steps"):
            curves.setdefault(arm, {})[seed] = (common.group_curve(root / r["name"], UP),
                                                common.group_curve(root / r["name"], DOWN))
    dense = next(r["name"] for r in runs if r.get("set", {}).get("train.eval_steps"))
    return {"T": int(shared.train.steps), "W": int(shared.schedule.warmup_steps), "final": final,
            "curves": curves, "start": up_down(step0_losses(summaries[dense])),
            "warmups": sorted(int(a[1:]) for a in final if a.startswith("w"))}


def _per_seed(m: dict, arm: str, i: int, sign: int = 1) -> list[float]:
    """Loss ``i`` (0 up, 1 down) of ``arm`` per seed, in seed order."""
    return [sign * m["final"][arm][s][i] for s in sorted(m["final"][arm])]


def judge(m: dict[str, Any]) -> dict[str, Any]:
    """The four claims, each a family of sub-claims (Holm within a family)."""
    start_up, start_down = m["start"]
    ref = f"w{m['W']}"
    learn = {a: [start_down - d for d in _per_seed(m, a, 1)] for a in m["final"]}
    forget = {a: [u - start_up for u in _per_seed(m, a, 0)] for a in m["final"]}
    margin = EQUIVALENCE * float(np.mean(learn[ref]))
    a_tests = [stats.paired(_per_seed(m, f"w{w}", i), _per_seed(m, ref, i),
                            f"{name} loss, W = {w} minus W = {m['W']}", margin=margin)
               for w in m["warmups"] if f"w{w}" != ref for i, name in ((1, "code_python"), (0, "upstream"))]
    b_tests = [stats.paired(learn["peak2x"], learn["peak0.5x"], "learning, 2x minus 0.5x"),
               stats.paired(forget["peak2x"], forget["peak0.5x"], "forgetting, 2x minus 0.5x")]
    c_tests = [stats.paired(learn[ref], learn["constant"], "learning, re-warm minus constant"),
               stats.paired(forget[ref], forget["constant"], "forgetting, re-warm minus constant")]
    gaps = {s: stability_gap(up) for s, (up, _) in m["curves"].get(ref, {}).items()}
    d_tests = [stats.one_sample([g["rise"] for g in gaps.values()], "rise of the upstream loss"),
               stats.one_sample([g["recovery"] for g in gaps.values()], "recovery by the end")]
    seeds = stats.seed_check({a: len(v) for a, v in m["final"].items()})
    learns = stats.Precondition("the continuation learns code_python", float(np.mean(learn[ref])) > 0,
                                f"1x learning {pm(learn[ref])} nats")
    n_evals = min((len(up) for up, _ in m["curves"].get(ref, {}).values()), default=0)
    dense = stats.Precondition("dense early evals on every seed", len(gaps) >= stats.MIN_SEEDS and n_evals >= 5,
                               f"{len(gaps)} seeds with {n_evals} evals")
    out = {"learn": learn, "forget": forget, "margin": margin, "gaps": gaps}
    for key, tests, checks in (("a", a_tests, [seeds, learns]), ("b", b_tests, [seeds]),
                               ("c", c_tests, [seeds]), ("d", d_tests, [seeds, dense])):
        out[key] = stats.verdict_with(checks, tests) + (tests,)
    return out


def run(ctx: Context) -> Section:
    m = collect(ctx)
    return write(ctx, m, judge(m))


def _mean_curve(per_seed: dict[int, dict[int, float]]) -> dict[int, float]:
    steps = sorted(set.intersection(*(set(c) for c in per_seed.values())))
    return {s: float(np.mean([c[s] for c in per_seed.values()])) for s in steps}


def _images(ctx: Context, m: dict, j: dict) -> list[str]:
    ref, T = f"w{m['W']}", m["T"]
    arms = {w: {"up": _per_seed(m, f"w{w}", 0), "down": _per_seed(m, f"w{w}", 1)} for w in m["warmups"]}
    peaks = [(0.5, "peak0.5x"), (1.0, ref), (2.0, "peak2x")]
    label = {"peak0.5x": "re-warm 0.5x", ref: "re-warm 1x", "peak2x": "re-warm 2x", "constant": "constant"}
    mean = {a: (_mean_curve({s: c[0] for s, c in m["curves"][a].items()}),
                _mean_curve({s: c[1] for s, c in m["curves"][a].items()})) for a in m["curves"]}
    return [str(p) for p in (
        plot_warmups(arms, T, m["start"], ctx.image(PART, "warmup")),
        plot_peaks(peaks, [np.mean(j["learn"][a]) for _, a in peaks], [np.mean(j["forget"][a]) for _, a in peaks],
                   ctx.image(PART, "peak")),
        plot_versus({label[a]: mean[a] for a in (ref, "constant")}, ctx.image(PART, "constant_vs_rewarm")),
        plot_gap({label[a]: mean[a][0] for a in label if a in mean}, ctx.image(PART, "stability_gap")))]


def _table(m: dict, j: dict) -> str:
    names = {f"w{w}": f"(a) W = {w} ({100 * w / m['T']:g}% of T)" for w in m["warmups"]}
    names |= {"peak0.5x": "(b) eta_max = 0.5x", "peak2x": "(b) eta_max = 2x",
              "constant": f"(c) constant final LR {settings.FINAL_LR:g}"}
    rows = [[label, len(m["final"][arm]), pm(_per_seed(m, arm, 0)), pm(_per_seed(m, arm, 1)),
             pm(j["forget"][arm]), pm(j["learn"][arm])] for arm, label in names.items()]
    table = md_table(["arm", "seeds", "upstream loss", "code_python loss", "forgetting", "learning"], rows)
    return (f"{table}\n\nStep 0 (the pretrained model): upstream {m['start'][0]:.3f}, code_python "
            f"{m['start'][1]:.3f}. Values are mean ± sd over the seeds.")


def write(ctx: Context, m: dict[str, Any], j: dict[str, Any]) -> Section:
    T, W = m["T"], m["W"]
    gaps = j["gaps"]
    gap_text = "; ".join(f"seed {s}: {g['start']:.3f} -> {g['peak']:.3f} at step {g['peak_step']} -> "
                         f"{g['last']:.3f}" for s, g in gaps.items())
    why = (f"Each finding is judged by paired t tests over the seeds (same data order in every arm), "
           f"Holm-corrected within the finding (level {stats.ALPHA}). "
           f"(b) headline, **{j['b'][0]}**: {j['b'][1]} "
           f"(a) {j['a'][0]}: warmup length barely matters = every W within ±{j['margin']:.4f} nats "
           f"({100 * EQUIVALENCE:g}% of the 1x learning) of W = {W} (two one-sided tests). {j['a'][1]} "
           f"(c) {j['c'][0]}: Gupta et al. found re-warming adapts better downstream and the constant-LR "
           f"baseline forgets less upstream. {j['c'][1]} (d) {j['d'][0]}: upstream loss after the switch "
           f"({gap_text}). {j['d'][1]}")
    numbers = {"T": T, "W": W, "start": {"upstream": m["start"][0], "downstream": m["start"][1]},
               "final": {a: {str(s): v for s, v in x.items()} for a, x in m["final"].items()},
               "learning": j["learn"], "forgetting": j["forget"], "equivalence_margin": j["margin"],
               "gaps": {str(s): g for s, g in gaps.items()},
               "verdicts": {k: j[k][0] for k in "abcd"},
               "tests": {k: [vars(t) for t in j[k][2]] for k in "abcd"}}
    seeds = len(next(iter(m["final"].values())))
    return Section(
        part=PART, title="Re-warming the learning rate (Gupta et al. 2023)",
        claim=("Continuing a pretrained model on new data, the warmup length barely matters; a higher "
               "re-warmed peak learns the new domain more and forgets the old one more; re-warming "
               "learns and forgets more than holding the final LR; and the upstream loss first rises "
               "then partly recovers (the stability gap)."),
        source="Gupta et al. 2023, Continual Pre-Training of Large Language Models: How to (re)warm "
               "your model? (Figs. 2-4, 6)",
        setting=(f"the shared cosine pretraining (on the five general domains, ending at eta = "
                 f"{settings.FINAL_LR:g}) continued {T} steps on code_python only; linear re-warm from "
                 f"{settings.FINAL_LR:g} over W steps, cosine re-decay to 0.1 x eta_max. (a) W = "
                 f"{', '.join(f'{w} ({100 * w / T:g}%)' for w in m['warmups'])} at eta_max = "
                 f"{settings.PRETRAIN_LR:g}; (b) eta_max = 0.5x, 1x, 2x at W = {W}; (c) the constant final "
                 f"LR; (d) dense early evals on the (b) and (c) arms. Every arm: seeds "
                 f"{', '.join(map(str, range(seeds)))}. Upstream loss = mean over the five general domains."),
        table=_table(m, j), verdict=j["b"][0], why=why, images=_images(ctx, m, j), numbers=numbers)
