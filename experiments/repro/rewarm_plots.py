"""The re-warming reproduction's figures (matplotlib, Agg): one PNG per claim."""

from __future__ import annotations

from pathlib import Path

from cpt_jax.eval.report_plots import pyplot, save_figure


def _label(ax, xlabel: str, ylabel: str, title: str, size: int = 10) -> None:
    """Axis labels, title, grid and legend, the same on every panel."""
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=size)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)


def plot_warmups(arms: dict[int, dict[str, list[float]]], T: int, start: tuple[float, float], path: Path) -> Path:
    """(a) final upstream and code_python loss against the warmup W (% of T): each seed and the mean."""
    fig, axes = pyplot().subplots(1, 2, figsize=(9.5, 3.6))
    ws = sorted(arms)
    pct = [100 * w / T for w in ws]
    for ax, key, title, s0 in zip(axes, ("up", "down"), ("upstream (5 general domains)", "code_python"), start):
        for w, x in zip(ws, pct):
            ax.scatter([x] * len(arms[w][key]), arms[w][key], color="C0", s=18, alpha=0.6,
                       label="one seed" if w == ws[0] else None)
        ax.plot(pct, [sum(arms[w][key]) / len(arms[w][key]) for w in ws], "o-", color="C1", label="seed mean")
        ax.set_xticks(pct)
        _label(ax, "warmup W (% of the continuation's steps)", "final held-out loss", f"{title} (step 0: {s0:.3f})")
    fig.suptitle("(a) final losses against the warmup length (re-warm to 1x)", fontsize=11)
    return save_figure(fig, path)


def plot_peaks(peaks: list[tuple[float, str]], learn: list[float], forget: list[float], path: Path) -> Path:
    """(b) learning (downstream) and forgetting (upstream) against the re-warmed peak."""
    fig, ax = pyplot().subplots(figsize=(6.2, 3.8))
    xs = [x for x, _ in peaks]
    ax.plot(xs, learn, "o-", color="C2", label="learning: code_python loss drop")
    ax.plot(xs, forget, "s-", color="C3", label="forgetting: upstream loss rise")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:g}x" for x in xs])
    _label(ax, "re-warmed peak eta_max (x the pretraining peak)", "loss change over the continuation",
           "(b) learning and forgetting against the re-warmed peak", 11)
    return save_figure(fig, path)


def plot_versus(curves: dict[str, tuple[dict[int, float], dict[int, float]]], path: Path) -> Path:
    """(c) upstream and code_python loss over the continuation, re-warm vs constant final LR."""
    fig, axes = pyplot().subplots(1, 2, figsize=(9.5, 3.6))
    for i, (name, (up, down)) in enumerate(curves.items()):
        for ax, c in zip(axes, (up, down)):
            steps = sorted(c)
            ax.plot(steps, [c[s] for s in steps], "o-", ms=3, color=f"C{i}", label=name)
    for ax, title in zip(axes, ("upstream (5 general domains)", "code_python")):
        _label(ax, "continuation step", "held-out loss", title)
    fig.suptitle("(c) re-warming vs holding the pretraining's final LR", fontsize=11)
    return save_figure(fig, path)


def plot_gap(curves: dict[str, dict[int, float]], path: Path) -> Path:
    """(d) upstream loss right after the switch (dense early evals): the stability gap."""
    fig, ax = pyplot().subplots(figsize=(6.8, 4.0))
    start = None
    for i, (name, c) in enumerate(curves.items()):
        steps = sorted(c)
        start = c[steps[0]] if start is None else start
        ax.plot([s + 1 for s in steps], [c[s] for s in steps], "o-", ms=3, color=f"C{i}", label=name)
    if start is not None:
        ax.axhline(start, color="gray", ls="--", lw=1, label="step 0 (pretrained)")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    _label(ax, "continuation step + 1 (log scale)", "upstream held-out loss (mean of 5 domains)",
           "(d) stability gap: upstream loss after the switch to code_python", 11)
    return save_figure(fig, path)
