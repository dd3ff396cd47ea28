"""Figures of the D-CPT reproduction: measured losses against D with the law's curves, and the
ratio trade-off at the held-out model size with the measured runs on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cpt_jax import dcpt
from cpt_jax.dcpt_ratio import RatioChoice, curves
from cpt_jax.eval.report_plots import pyplot, save_figure

MARKERS = "osD^v"


def plot_fit(results: dcpt.Results, fit_json: dict | None, held_N: float, path: str | Path) -> None:
    """Both losses against CPT tokens D: measured points (one colour per ratio r, one marker
    per model size) and the law's curves (solid: fitted sizes, dashed: held-out size)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    ratios = sorted(set(results.r.tolist()))
    sizes = sorted(set(results.N.tolist()))
    for ax, kind in zip(axes, dcpt.LOSSES):
        for i, r in enumerate(ratios):
            for j, n in enumerate(sizes):
                m = np.isclose(results.r, r) & np.isclose(results.N, n)
                held = np.isclose(n, held_N)
                ax.plot(results.D[m], results.loss(kind)[m], MARKERS[j % 5], color=f"C{i}",
                        mfc="none" if held else f"C{i}",
                        label=f"r={r:.2f}, N={n / 1e6:.2f}M" + (" (held out)" if held else ""))
                if fit_json is not None and m.any():
                    d = np.linspace(results.D[m].min(), results.D[m].max(), 50)
                    pred = dcpt.predict(fit_json[kind]["params"], n, d, dcpt.law_ratio(kind, r),
                                        fit_json["eps"])
                    ax.plot(d, pred, "--" if held else "-", color=f"C{i}", lw=1)
        ax.set_xlabel("CPT tokens D")
        ax.set_ylabel(f"{kind} held-out loss (nats/token)")
        ax.set_title(f"{kind} loss: measured (markers), law (lines; dashed = held-out size)",
                     fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def plot_ratio(fit_json: dict | None, N: float, D: float, L_g0: float, tolerance: float,
               choice: RatioChoice | None, measured: dict[float, list[dict]], path: str | Path) -> None:
    """Predicted general and domain loss against r at (N, D), the feasible region
    ``L_g <= (1 + T) L_g0`` shaded, r* marked; measured final losses of every seed on top."""
    plt = pyplot()
    limit = (1 + tolerance) * L_g0
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if fit_json is not None:
        r = np.linspace(0.0, 1.0, 801)
        g, m = curves(fit_json, N, r, D=D)
        ax.fill_between(r, 0, 1, where=g <= limit, transform=ax.get_xaxis_transform(),
                        color="green", alpha=0.1, label="law: L_g <= (1+T) L_g0")
        ax.plot(r, g, "-", color="C0", label="general loss (law)")
        ax.plot(r, m, "-", color="C1", label="domain loss (law)")
    ax.axhline(limit, color="red", lw=0.8, label=f"(1+T) L_g0, T={tolerance}")
    for kind, color in (("general", "C0"), ("domain", "C1")):
        xs = [r for r, seeds in measured.items() for _ in seeds]
        ys = [s[kind] for seeds in measured.values() for s in seeds]
        ax.plot(xs, ys, "o", color=color, mfc="none", ms=7, label=f"{kind} loss (measured)")
    if choice is not None:
        ax.axvline(choice.r, color="black", lw=1.0, label=f"r* = {choice.r:.3f}")
    ax.set_xlim(0, 1)
    ys = [s[k] for seeds in measured.values() for s in seeds for k in ("general", "domain")]
    if ys:
        ax.set_ylim(min(ys + [limit]) - 0.3, max(ys + [limit]) + 0.3)
    ax.set_xlabel("domain ratio r (share of code_python in the CPT mixture)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(f"ratio trade-off at the held-out size, N={N / 1e6:.2f}M, D={D:,.0f} tokens",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
