"""The two figures of the replay part: forgetting and learning against the replay share, and
the learning rate and losses along the cosine and infinite chains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from cpt_jax.eval.report_plots import pyplot, save_figure, step_axis
from cpt_jax.run_dir import RunDir
from cpt_jax.schedules import make_schedule
from experiments.repro import common, settings


def plot_replay(an: dict[str, Any], path: Path) -> Path:
    """F and the new domain's loss (mean, one dot per seed) against the replay share."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "forget", "forgetting: upstream loss rise"),
                           (axes[1], "learn", f"{settings.DOMAIN_A} loss (lower = more learned)")):
        shares = sorted(an[key])
        x = [100 * f for f in shares]
        ax.errorbar(x, [np.mean(an[key][f]) for f in shares],
                    yerr=[np.std(an[key][f], ddof=1) if len(an[key][f]) > 1 else 0 for f in shares],
                    fmt="-o", color="C0", capsize=3, label="mean ± sd over seeds")
        for f in shares:
            ax.plot([100 * f] * len(an[key][f]), an[key][f], "x", color="C1", ms=6)
        ax.plot([], [], "x", color="C1", label="one seed")
        ax.set_xlabel("replayed share of the sequences (%)")
        ax.set_ylabel(label)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Replay while continuing on new data: forgetting vs learning")
    return save_figure(fig, path)


def lr_curve(run_dir: Path) -> np.ndarray:
    """The learning rate at steps 0 .. T of a run (T: where it ends), from its saved config."""
    cfg = RunDir(run_dir).read_json("config.json")
    fn = make_schedule(ConfigDict(cfg["schedule"]), cfg["optim"]["peak_lr"], cfg["train"]["steps"])
    return np.array([float(fn(t)) for t in range(cfg["train"]["steps"] + 1)])


CHAINS = {  # stages of each chain (under the runs root) and its colour
    "cosine re-warm": (["pretrain/cosine", "replay/rep0_s0", "replay/cos_B_s0"], "C0"),
    "infinite": (["pretrain/infinite", "replay/inf_A_s0", "replay/inf_B_s0"], "C3"),
}
BRANCHES = {"replay/inf_A_anneal_s0": "replay/inf_A_s0", "replay/inf_B_anneal_s0": "replay/inf_B_s0"}


def plot_chains(root: Path, path: Path) -> Path:
    """LR (top) and held-out losses (bottom: upstream, A, B) against steps since the start of
    pretraining; anneal branches dashed, starting where they branch off (seed 0's chains)."""
    base = Path(root).parent
    plt = pyplot()
    fig = plt.figure(figsize=(12, 7))
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.3])
    lr_ax = fig.add_subplot(grid[0, :])
    loss_axes = [fig.add_subplot(grid[1, i], sharex=lr_ax) for i in range(3)]
    groups = (("upstream", settings.UPSTREAM), (settings.DOMAIN_A, (settings.DOMAIN_A,)),
              (settings.DOMAIN_B, (settings.DOMAIN_B,)))
    offsets: dict[str, int] = {}
    for label, (stages, color) in CHAINS.items():
        at = 0
        for k, stage in enumerate(stages):
            offsets[stage] = at
            lr = lr_curve(base / stage)
            lr_ax.plot(at + np.arange(len(lr)), lr, color=color, label=label if k == 0 else None)
            for ax, (_, domains) in zip(loss_axes, groups):
                curve = common.group_curve(base / stage, domains)
                if curve:
                    xs = sorted(curve)
                    ax.plot([at + x for x in xs], [curve[x] for x in xs], "-o", color=color, ms=3,
                            label=label if k == 1 else None)
            at += len(lr) - 1
    for branch, parent in BRANCHES.items():
        cfg = RunDir(base / branch).read_json("config.json")
        start = offsets[parent] + int(Path(cfg["train"]["init_from"]).name)  # .../checkpoints/STEP
        lr = lr_curve(base / branch)
        lr_ax.plot(start + np.arange(len(lr)), lr, "--", color="C1",
                   label="infinite: anneal branch" if "A_anneal" in branch else None)
        for ax, (_, domains) in zip(loss_axes, groups):
            curve = common.group_curve(base / branch, domains)
            xs = sorted(curve)
            ax.plot([start + x for x in xs], [curve[x] for x in xs], "--s", color="C1", ms=4,
                    label="infinite + anneal" if "A_anneal" in branch else None)
    bounds = [offsets[s] for s in CHAINS["cosine re-warm"][0]] + [at]
    names = ["pretraining (upstream)", f"A: {settings.DOMAIN_A}", f"B: {settings.DOMAIN_B}"]
    for ax in [lr_ax, *loss_axes]:
        for x in bounds[1:-1]:
            ax.axvline(x, color="grey", ls=":", lw=1)
    for lo, hi, name in zip(bounds, bounds[1:], names):
        lr_ax.text((lo + hi) / 2, 1.02, name, transform=lr_ax.get_xaxis_transform(), ha="center", fontsize=9)
    lr_ax.set_ylabel("learning rate")
    lr_ax.grid(True, alpha=0.3)
    lr_ax.legend(fontsize=8, frameon=False)
    for ax, (name, _) in zip(loss_axes, groups):
        ax.set_title(f"held-out loss: {name}")
        ax.set_ylabel("loss (nats / token)")
        ax.grid(True, alpha=0.3)
        step_axis(ax)
        ax.set_xlabel("steps since the start of pretraining")
    loss_axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle(f"Cosine re-warming vs the infinite schedule: pretraining, then {settings.DOMAIN_A}, "
                 f"then {settings.DOMAIN_B}")
    return save_figure(fig, path)
