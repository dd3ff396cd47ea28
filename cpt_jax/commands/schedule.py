"""`cpt-jax schedule`: plot a config's learning-rate schedule and print a few of its values."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schedule", help="plot a config's learning-rate schedule")
    p.add_argument("--config", required=True, help="experiment file defining get_config()")
    p.add_argument("--out", default="lr.png", help="image to write (.png, .svg, .pdf)")
    p.set_defaults(func=run, takes_config=True)


def key_steps(phases: list, total: int) -> list[tuple[int, str]]:
    """(step, label) for step 0, each phase's warmup end and start, and the last step."""
    marks: list[tuple[int, str]] = [(0, "start")]
    start = 0
    for i, ph in enumerate(phases):
        tag = f"phase {i + 1} ({ph.name})" if len(phases) > 1 else ph.name
        if i:
            marks.append((start, f"{tag} starts"))
        if ph.warmup:
            marks.append((start + ph.warmup, f"{tag} warmup done"))
        start += ph.steps
    marks.append((total - 1, "last update"))
    marks.append((total, "end (t = T)"))
    seen: dict[int, str] = {}
    for step, label in marks:
        seen[step] = f"{seen[step]}; {label}" if step in seen else label
    return sorted(seen.items())


def run(args: argparse.Namespace) -> int:
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    from cpt_jax import configure, schedules

    cfg = configure.load(args.config, args.config_overrides)
    total, peak = int(cfg.train.steps), float(cfg.optim.peak_lr)
    phases = schedules.resolve_phases(cfg.schedule, peak, total)
    fn = schedules.make_schedule(cfg.schedule, peak, total)
    steps = np.arange(total + 1)
    lr = np.asarray(fn(jnp.asarray(steps)), np.float64)

    title = schedules.describe(cfg.schedule, peak, total)
    print(f"schedule: {title}  (train.steps={total}, optim.peak_lr={peak:g})")
    for step, label in key_steps(phases, total):
        print(f"  step {step:>8d}  lr {lr[step]:.4e}  {label}")

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    ax.plot(steps, lr, color="#1f5fa8", lw=1.8)
    start = 0
    for i, ph in enumerate(phases):
        if len(phases) > 1:
            ax.axvspan(start, start + ph.steps, color=("#f2f2f2" if i % 2 else "#e3ecf7"), zorder=0)
            ax.text(start + ph.steps / 2, 1.0, f"{ph.name}\n{ph.steps} steps",
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
        if ph.warmup:
            ax.axvline(start + ph.warmup, color="#999999", ls=":", lw=1)
        start += ph.steps
    ax.axhline(peak, color="#c44e52", ls="--", lw=0.8)
    ax.set_xlim(0, total)
    ax.set_ylim(0, max(float(lr.max()), peak) * 1.08)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.1e}" if v else "0"))
    ax.grid(True, alpha=0.3)
    name = Path(args.config).stem
    ax.set_title(f"{name}: {title}   (peak_lr {peak:g} dashed, {total} steps)", fontsize=10,
                 pad=26 if len(phases) > 1 else 8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"wrote {out}")
    return 0
