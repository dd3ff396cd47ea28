"""Plots of a fitted D-CPT law: predicted against measured loss, and the ratio trade-off."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cpt_jax.dcpt import LOSSES, Results, match_holdout
from cpt_jax.dcpt_ratio import RatioChoice, curves, predicted


def plot_fit(fit_json: dict, results: Results, path: str | Path) -> None:
    """Predicted against measured loss, one panel per loss; held-out rows marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = match_holdout(results, fit_json.get("holdout", []))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, kind in zip(axes, LOSSES):
        obs = results.loss(kind)
        pred = predicted(fit_json, kind, results.N, results.D, results.r)
        for mask, label, marker in ((~held, "fitted", "o"), (held, "held out", "x")):
            if mask.any():
                sc = ax.scatter(obs[mask], pred[mask], c=results.r[mask], cmap="viridis",
                                vmin=0, vmax=1, marker=marker, label=label)
        lo, hi = min(obs.min(), pred.min()), max(obs.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        q = fit_json[kind].get("fit", {})
        ax.set_title(f"{kind} loss (R^2 {q.get('r2', float('nan')):.3f} fitted)")
        ax.set_xlabel("measured loss")
        ax.set_ylabel("predicted loss")
        ax.legend(loc="upper left")
    fig.colorbar(sc, ax=axes, label="domain ratio r")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ratio(fit_json: dict, N: float, L_g0: float, tolerance: float,
               cases: dict[str, tuple[float | None, float | None, RatioChoice | None]],
               path: str | Path) -> None:
    """Predicted general and domain loss against r, one panel per case ``label -> (D, D_dom,
    choice)``; the feasible region ``L_g <= (1 + T) L_g0`` shaded, r* and the largest r marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = np.linspace(0.0, 1.0, 801)
    limit = (1 + tolerance) * L_g0
    fig, axes = plt.subplots(1, len(cases), figsize=(6.4 * len(cases), 4.4), squeeze=False)
    for ax, (label, (D, D_dom, choice)) in zip(axes[0], cases.items()):
        g, m = curves(fit_json, N, r, D, D_dom)
        ax.fill_between(r, 0, 1, where=g <= limit, transform=ax.get_xaxis_transform(),
                        color="green", alpha=0.12, label="feasible: L_g <= (1+T) L_g0")
        ax.plot(r, g, "-", label="general loss")
        ax.plot(r, m, "--", label="domain loss")
        ax.axhline(limit, color="red", lw=0.8, label=f"(1+T) L_g0, T={tolerance}")
        if choice is not None:
            ax.axvline(choice.r, color="black", lw=1.0, label=f"r* = {choice.r:.3f}")
            ax.axvline(choice.r_max, color="gray", lw=0.8, ls=":",
                       label=f"largest feasible r = {choice.r_max:.3f}")
        ax.set_xlabel("domain ratio r")
        ax.set_ylabel("predicted loss")
        ax.set_title(f"{label}, N={N:.3g}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
