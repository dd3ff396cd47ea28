"""The report's PNG figures (matplotlib, Agg). One colour per run across every figure."""

from __future__ import annotations

import math
from pathlib import Path

from cpt_jax.eval.runs import Run

DPI = 130


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(i: int) -> str:
    return f"C{i % 10}"


def _style(i: int, n: int) -> dict:
    """Run ``i``'s colour and marker (about a dozen markers per line, so overlaps stay visible)."""
    return {"color": _color(i), "marker": "osD^v<>ph*"[i % 10], "ms": 3.5,
            "markevery": max(1, n // 12), "lw": 1.4}


def _loss_axis(ax, log: bool = True) -> None:
    """Log-scale loss axis with plain-number ticks (losses span a small range)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    step_axis(ax)


def step_axis(ax) -> None:
    """Optimizer steps on x, ticks at whole steps only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")


def _legend(ax, n: int) -> None:
    if n:
        ax.legend(fontsize=8, frameon=False)


def save_figure(fig, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG at ``DPI`` and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


def _grid(n: int, width: float = 4.6, height: float = 3.3):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def train_loss(runs: list[Run], path: Path) -> bool:
    fig, ax = pyplot().subplots(figsize=(7.5, 4.2))
    n, values = 0, []
    for i, run in enumerate(runs):
        s, v = run.series("train/loss")
        if len(s):
            ax.plot(s, v, label=run.name, **_style(i, len(s)))
            n, values = n + 1, values + list(v)
    if not n:
        pyplot().close(fig)
        return False
    log = min(values) > 0 and max(values) / min(values) > 1.5  # log scale when the start dwarfs the end
    _loss_axis(ax, log=log)
    ax.set_ylabel("training loss (nats/token" + (", log scale)" if log else ")"))
    ax.set_title("Training loss")
    _legend(ax, n)
    save_figure(fig, path)
    return True


def eval_domains(runs: list[Run], path: Path, prefix: str = "eval") -> bool:
    domains: list[str] = []
    for run in runs:
        domains += [d for d in run.domains(prefix) if d not in domains]
    if not domains:
        return False
    fig, axes = _grid(len(domains))
    for ax, d in zip(axes, domains):
        roles = {w for run in runs for w in ("upstream", "downstream") if d in run.group(w)}
        tag = {"upstream": " (upstream)", "downstream": " (downstream)"}.get(next(iter(roles)), "") \
            if len(roles) == 1 else ""
        for i, run in enumerate(runs):
            s, v = run.series(f"{prefix}/{d}/loss")
            if len(s):
                ax.plot(s, v, label=run.name, **_style(i, len(s)))
        _loss_axis(ax, log=False)
        ax.set_title(f"{d}{tag}")
        ax.set_ylabel("validation loss")
    _legend(axes[0], len(runs))
    fig.suptitle("Per-domain validation loss", fontsize=12)
    save_figure(fig, path)
    return True


def forgetting_learning(runs: list[Run], path: Path) -> bool:
    """Upstream loss (forgetting) beside downstream loss (learning), the re-warming figure."""
    if not any(len(run.group_series(w)[0]) for run in runs for w in ("upstream", "downstream")):
        return False
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for ax, which, title in ((axes[0], "upstream", "Upstream loss (forgetting)"),
                             (axes[1], "downstream", "Downstream loss (learning)")):
        names = set()
        for i, run in enumerate(runs):
            s, v = run.group_series(which)
            if len(s):
                ax.plot(s, v, label=run.name, **_style(i, len(s)))
                names.update(run.group(which))
        _loss_axis(ax, log=False)
        ax.set_title(title)
        ax.set_ylabel(f"mean validation loss over {', '.join(sorted(names)) or '–'}", fontsize=9)
        _legend(ax, len(names))
    fig.suptitle("Learning vs forgetting (lower is better)", fontsize=12)
    save_figure(fig, path)
    return True


def tradeoff(runs: list[Run], path: Path) -> bool:
    """Final downstream loss (x, learning) against final upstream loss (y, forgetting), per run."""
    pts = []
    for i, run in enumerate(runs):
        (_, up), (_, down) = run.group_series("upstream"), run.group_series("downstream")
        if len(up) and len(down):
            pts.append((i, run.name, float(down[-1]), float(up[-1])))
    if len(pts) < 2:
        return False
    fig, ax = pyplot().subplots(figsize=(6.2, 4.8))
    xs, ys = [p[2] for p in pts], [p[3] for p in pts]
    tol_x, tol_y = 0.02 * (max(xs) - min(xs) + 1e-12), 0.02 * (max(ys) - min(ys) + 1e-12)
    for k, (i, name, x, y) in enumerate(pts):
        st = _style(i, 1)
        ax.plot([x], [y], linestyle="none", marker=st["marker"], color=st["color"], ms=9, label=name)
        near = sum(abs(x - p[2]) <= tol_x and abs(y - p[3]) <= tol_y for p in pts[:k])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(7, 4 - 11 * near), fontsize=8)
    ax.margins(0.15)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("final downstream loss (learning; lower is better)")
    ax.set_ylabel("final upstream loss (forgetting; lower is better)")
    ax.set_title("Learning–forgetting trade-off (best: bottom left)")
    save_figure(fig, path)
    return True


def _schedule_curve(run: Run):
    """``(steps, lr)`` at every step 0..T of the run's configured schedule, or None when its
    config cannot rebuild it (then the logged ``lr`` is drawn)."""
    import numpy as np

    try:
        from ml_collections import ConfigDict

        from cpt_jax.schedules import make_schedule

        c = run.config
        total = int(c["train"]["steps"])
        fn = make_schedule(ConfigDict(c["schedule"]), float(c["optim"]["peak_lr"]), total)
        steps = np.arange(total + 1)
        return steps + run.step_offset, np.asarray([float(fn(k)) for k in steps])
    except Exception:  # an older or partial config.json
        return None


def lr_schedule(runs: list[Run], path: Path) -> bool:
    """Each run's LR at every step from step 0, its start LR marked (logged points as dots)."""
    fig, ax = pyplot().subplots(figsize=(7.5, 3.8))
    n = 0
    for i, run in enumerate(runs):
        s, v = run.series("lr")
        curve = _schedule_curve(run)
        if curve is not None:
            ax.plot(*curve, color=_color(i), lw=1.4, label=run.name)
            ax.plot(s, v, linestyle="none", marker=_style(i, 1)["marker"], ms=3, color=_color(i))
            ax.annotate(f"start {curve[1][0]:.2g}", (curve[0][0], curve[1][0]), textcoords="offset points",
                        xytext=(4, 4 + 9 * i), fontsize=7, color=_color(i))
            n += 1
        elif len(s):
            ax.plot(s, v, label=run.name, **_style(i, len(s)))
            n += 1
    if not n:
        pyplot().close(fig)
        return False
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(True, alpha=0.3)
    step_axis(ax)
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedule")
    _legend(ax, n)
    save_figure(fig, path)
    return True


def doremi_weights(runs: list[Run], path: Path) -> bool:
    with_alpha = [(i, run) for i, run in enumerate(runs) if any(k.startswith("doremi/alpha/") for k in run.keys())]
    if not with_alpha:
        return False
    fig, axes = _grid(len(with_alpha), width=5.2)
    for ax, (_, run) in zip(axes, with_alpha):
        names = sorted(k.split("/", 2)[2] for k in run.keys() if k.startswith("doremi/alpha/"))
        for j, d in enumerate(names):
            s, v = run.series(f"doremi/alpha/{d}")
            ax.plot(s, v, color=_color(j), lw=1.4, label=d)
        ax.set_ylim(0, max(1e-3, ax.get_ylim()[1]))
        ax.grid(True, alpha=0.3)
        step_axis(ax)
        ax.set_ylabel("domain weight α")
        ax.set_title(run.name)
        _legend(ax, len(names))
    fig.suptitle("DoReMi domain weights over steps", fontsize=12)
    save_figure(fig, path)
    return True


def lawa(runs: list[Run], path: Path) -> bool:
    """Raw (solid) vs LAWA-averaged (dashed) validation loss per domain."""
    domains: list[str] = []
    for run in runs:
        domains += [d for d in run.domains("eval_lawa") if d not in domains]
    if not domains:
        return False
    with_lawa = [(i, run) for i, run in enumerate(runs) if run.domains("eval_lawa")]
    fig, axes = _grid(len(domains))
    for ax, d in zip(axes, domains):
        for i, run in with_lawa:
            for key, style, label in ((f"eval/{d}/loss", "-", "raw"), (f"eval_lawa/{d}/loss", "--", "LAWA")):
                s, v = run.series(key)
                if len(s):
                    ax.plot(s, v, style, label=f"{run.name} {label}", **_style(i, len(s)))
        _loss_axis(ax, log=False)
        ax.set_title(d)
        ax.set_ylabel("validation loss")
    _legend(axes[0], 1)
    fig.suptitle("Raw weights (solid) vs latest-weight average (dashed)", fontsize=12)
    save_figure(fig, path)
    return True


FIGURES = (
    ("forgetting_learning.png", "Learning vs forgetting", forgetting_learning),
    ("tradeoff.png", "Learning–forgetting trade-off", tradeoff),
    ("eval_loss.png", "Per-domain validation loss", eval_domains),
    ("train_loss.png", "Training loss", train_loss),
    ("lr.png", "Learning-rate schedule", lr_schedule),
    ("doremi_weights.png", "DoReMi domain weights", doremi_weights),
    ("lawa.png", "Raw vs LAWA", lawa),
)


def write_all(runs: list[Run], out: Path) -> list[tuple[str, str]]:
    """Draw every figure the runs have data for; ``[(file name, caption)]``."""
    written = []
    for name, caption, fn in FIGURES:
        if fn(runs, out / name):
            written.append((name, caption))
        elif (out / name).exists():
            (out / name).unlink()  # a stale figure from an earlier report
    return written
