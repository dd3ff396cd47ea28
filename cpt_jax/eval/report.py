"""`cpt-jax report`: compare training runs in ``report.md`` with PNG plots.

Each run directory holds ``config.json`` (resolved config; ``data.upstream`` /
``data.downstream`` name the domains whose loss measures forgetting / learning),
``metrics.jsonl`` (one JSON object per line with ``step``), ``summary.json`` (optional) and
``eval.json`` (optional, written by ``cpt-jax eval``). The final table takes each metric's last
logged value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cpt_jax.config import comma_list
from cpt_jax.errors import UserError

GROUPS = ("avg", "worst", "upstream", "downstream")


@dataclass
class Run:
    """One run's files, read once."""

    name: str
    path: Any
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of every record that logged a finite ``key``."""
        pts = [(r["step"], float(r[key])) for r in self.records
               if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
        if not pts:
            return np.zeros(0), np.zeros(0)
        steps, values = zip(*pts)
        return np.asarray(steps, np.float64), np.asarray(values, np.float64)

    def last(self, key: str) -> float | None:
        """The last logged finite value of ``key`` (None if never logged)."""
        _, v = self.series(key)
        return float(v[-1]) if len(v) else None

    def keys(self) -> set[str]:
        return {k for r in self.records for k in r}

    def domains(self, prefix: str = "eval") -> list[str]:
        """Domains with a ``<prefix>/<domain>/loss`` key, in first-logged order."""
        out: list[str] = []
        for r in self.records:
            for k in r:
                parts = k.split("/")
                if len(parts) == 3 and parts[0] == prefix and parts[2] == "loss" \
                        and parts[1] not in GROUPS and parts[1] not in out:
                    out.append(parts[1])
        return out

    def group(self, which: str) -> list[str]:
        """``data.upstream`` / ``data.downstream`` of the run's config, as a list."""
        text = self.config.get("data", {}).get(which, "") or ""
        return comma_list(text)

    def group_series(self, which: str, prefix: str = "eval") -> tuple[np.ndarray, np.ndarray]:
        """Mean loss over the group's domains at each step where all of them were logged."""
        names = [d for d in self.group(which) if d in self.domains(prefix)]
        if not names:
            return np.zeros(0), np.zeros(0)
        per = [dict(zip(*self.series(f"{prefix}/{d}/loss"))) for d in names]
        steps = sorted(set.intersection(*(set(p) for p in per)))
        return np.asarray(steps, np.float64), np.asarray([np.mean([p[s] for p in per]) for s in steps])


def _read_json(run: Any, name: str) -> dict[str, Any]:
    value = run.read_json(name)
    return value if isinstance(value, dict) else {}


def load_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """Read a run directory, local or ``gs://`` (``metrics.jsonl`` is required; one record
    per step, a resumed run's repeated steps merged)."""
    from cpt_jax.run_dir import CONFIG, EVAL, METRICS, SUMMARY, RunDir

    run = RunDir(path)
    if not run.file(METRICS).exists():
        raise UserError(f"{path} is not a run directory (no metrics.jsonl)")
    records = run.read_metrics()
    if not records:
        raise UserError(f"{run.file(METRICS)} has no records with a 'step'")
    return Run(name or run.root.name, run.root, _read_json(run, CONFIG), records,
               _read_json(run, SUMMARY), _read_json(run, EVAL))


def load_runs(paths: list[str]) -> list[Run]:
    """Runs named by their directory; clashing names get their parent directory prepended."""
    if not paths:
        raise UserError("no run directories given")
    from cpt_jax import storage

    resolved = [storage.path(p) for p in paths]
    names = [p.name for p in resolved]
    names = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in resolved]
    return [load_run(p, n) for p, n in zip(resolved, names)]


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
    for file, caption in plots:
        out += ["", f"## {caption}", "", f"![{caption}]({file})"]
    return "\n".join(out) + "\n"


def write_report(run_dirs: list[str], out_dir: str | os.PathLike) -> Any:
    """Write ``out_dir/report.md`` and its PNGs; returns the report path."""
    from cpt_jax.eval import report_plots

    from cpt_jax import storage

    runs = load_runs(run_dirs)
    with storage.writable_dir(out_dir) as out:
        out.mkdir(parents=True, exist_ok=True)
        plots = report_plots.write_all(runs, out)
        (out / "report.md").write_text(markdown(runs, plots))
    return storage.path(out_dir) / "report.md"
