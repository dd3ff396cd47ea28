"""`cpt-jax report`: compare training runs in ``report.md`` with PNG plots.

Each run directory holds ``config.json`` (resolved config; ``data.upstream`` /
``data.downstream`` name the domains whose loss measures forgetting / learning),
``metrics.jsonl`` (one JSON object per line with ``step``), ``summary.json`` (optional) and
``eval.json`` (optional, written by ``cpt-jax eval``). The final table takes each metric's last
logged value.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cpt_jax import storage
from cpt_jax.eval import report_plots
from cpt_jax.eval.runs import Run, load_runs

# ---------------------------------------------------------------------------------------
# tables


def final_row(run: Run) -> dict[str, Any]:
    """The run's final numbers: per-domain eval loss, avg, worst, group means, train loss."""
    row: dict[str, Any] = {"run": run.name, "steps": int(run.records[-1]["step"]),
                           "train/loss": run.last("train/loss"), "domains": {}}
    for d in run.domains():
        row["domains"][d] = run.last(f"eval/{d}/loss")
    losses = {d: v for d, v in row["domains"].items() if v is not None}
    row["avg"] = float(np.mean(list(losses.values()))) if losses else None
    row["worst"] = max(losses, key=losses.get) if losses else None
    for which in ("upstream", "downstream"):
        names = [d for d in run.group(which) if d in losses]
        row[which] = float(np.mean([losses[d] for d in names])) if names else None
    lawa = {d: run.last(f"eval_lawa/{d}/loss") for d in run.domains("eval_lawa")}
    if lawa:
        row["lawa_avg"] = float(np.mean([v for v in lawa.values() if v is not None]))
    return row


def bpb_row(run: Run) -> dict[str, float | None]:
    """Bits per byte per domain: the last logged ``eval/<domain>/bpb``, else ``eval.json``'s."""
    saved = run.eval.get("domains", {})
    out: dict[str, float | None] = {}
    for d in dict.fromkeys([*run.domains(), *saved]):
        v = run.last(f"eval/{d}/bpb")
        out[d] = v if v is not None else saved.get(d, {}).get("bpb")
    return {d: v for d, v in out.items() if v is not None}


def _bpb_table(runs: list[Run]) -> list[str]:
    """The bits-per-byte section (empty when no run has bytes): comparable across tokenizers."""
    rows = {r.name: bpb_row(r) for r in runs}
    domains = list(dict.fromkeys(d for row in rows.values() for d in row))
    if not domains:
        return []
    body = [[name, *[row.get(d) for d in domains],
             float(np.mean([row[d] for d in domains])) if all(d in row for d in domains) else None]
            for name, row in rows.items()]
    return ["", "## Bits per byte", "",
            "Last `eval/<domain>/bpb` (or `eval.json`): loss x tokens / (UTF-8 bytes x ln 2). Unlike "
            "the loss per token it compares runs whose tokenizers differ (e.g. after vocabulary "
            "expansion); lower is better.", "", *_table(["run", *domains, "avg"], body)]


def harness_row(run: Run) -> dict[str, float]:
    """``{"task/metric": value}`` of lm-evaluation-harness tasks: ``eval.json``'s (``cpt-jax eval
    --harness``), else the last logged ``harness/<task>/<metric>`` (``eval.harness_tasks``)."""
    saved = run.eval.get("harness", {})
    out = {f"{t}/{m}": v for t, row in saved.items() for m, v in row.items()}
    if not out:
        keys = dict.fromkeys(k for r in run.records for k in r if k.startswith("harness/"))
        out = {k[len("harness/"):]: run.last(k) for k in keys}
    return {k: v for k, v in out.items() if "stderr" not in k and v is not None}


def _harness_table(runs: list[Run]) -> list[str]:
    """The lm-evaluation-harness section (empty when no run has harness results)."""
    rows = {r.name: harness_row(r) for r in runs}
    cols = list(dict.fromkeys(c for row in rows.values() for c in row))
    if not cols:
        return []
    return ["", "## lm-evaluation-harness", "",
            "Each run's harness metrics (`eval.json` from `cpt-jax eval --harness`, else the last "
            "`harness/<task>/<metric>` logged in training), as lm-eval reports them.", "",
            *_table(["run", *cols], [[name, *[row.get(c) for c in cols]] for name, row in rows.items()])]


def _accuracy(res: dict[str, Any]) -> str:
    """``acc / acc_norm (n=...)``, each with ``± stderr`` when the result has one."""
    cell = lambda m: f"{res[m]:.4f}" + (f" ± {res[m + '_stderr']:.4f}" if m + "_stderr" in res else "")
    return f"{cell('acc')} / {cell('acc_norm')} (n={res['n']})"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return lines


def markdown(runs: list[Run], plots: list[tuple[str, str]]) -> str:
    """report.md: the final tables, then each plot with its caption."""
    rows = [final_row(r) for r in runs]
    domains: list[str] = []
    for r in runs:
        domains += [d for d in r.domains() if d not in domains]
    out = ["# Run report", "", f"Runs: {', '.join(f'`{r.name}` ({r.path})' for r in runs)}", ""]
    for r in runs:
        up, down = ", ".join(r.group("upstream")) or "–", ", ".join(r.group("downstream")) or "–"
        out.append(f"- `{r.name}`: upstream (forgetting) {up}; downstream (learning) {down}")
    out += ["", "## Final validation loss", "",
            "Last logged `eval/<domain>/loss` of each run; avg is the mean over domains, worst the "
            "domain with the highest loss; lower is better.", ""]
    header = ["run", "steps", "train loss", *domains, "avg", "worst", "upstream", "downstream"]
    has_lawa = any("lawa_avg" in r for r in rows)
    header += ["LAWA avg"] if has_lawa else []
    body = []
    for r in rows:
        worst = f"{r['worst']} ({r['domains'][r['worst']]:.4f})" if r["worst"] else None
        line = [r["run"], r["steps"], r["train/loss"], *[r["domains"].get(d) for d in domains],
                r["avg"], worst, r["upstream"], r["downstream"]]
        body.append(line + ([r.get("lawa_avg")] if has_lawa else []))
    out += _table(header, body)
    out += _bpb_table(runs)
    tasks: list[str] = []
    for r in runs:
        tasks += [t for t in r.eval.get("tasks", {}) if t not in tasks]
    if tasks:
        out += ["", "## Zero-shot accuracy", "",
                "From each run's `eval.json` (`cpt-jax eval`): acc / acc_norm (lm-eval-harness: "
                "log-likelihood per character of the choice) ± standard error, n examples; chance "
                "is uniform guessing.", ""]
        body = []
        for r in runs:
            res = r.eval.get("tasks", {})
            cells = [_accuracy(res[t]) if t in res else None for t in tasks]
            body.append([r.name, *cells])
        chance = {t: next(r.eval["tasks"][t].get("chance") for r in runs if t in r.eval.get("tasks", {}))
                  for t in tasks}
        body.append(["chance", *[chance[t] for t in tasks]])
        out += _table(["run", *tasks], body)
    out += _harness_table(runs)
    for file, caption in plots:
        out += ["", f"## {caption}", "", f"![{caption}]({file})"]
    return "\n".join(out) + "\n"


def write_report(run_dirs: list[str], out_dir: str | os.PathLike) -> Any:
    """Write ``out_dir/report.md`` and its PNGs; returns the report path."""
    runs = load_runs(run_dirs)
    with storage.writable_dir(out_dir) as out:
        out.mkdir(parents=True, exist_ok=True)
        plots = report_plots.write_all(runs, out)
        (out / "report.md").write_text(markdown(runs, plots))
    return storage.path(out_dir) / "report.md"
