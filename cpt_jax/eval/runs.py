"""The runs a report compares: each run directory read once (local or ``gs://``).

``Run`` holds a run's config, its metrics as one record per step (``RunDir.read_metrics``),
its summary and its ``eval.json``, and answers the series questions the tables and plots ask.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cpt_jax import storage
from cpt_jax.checks import comma_list
from cpt_jax.errors import UserError
from cpt_jax.run_dir import CONFIG, EVAL, METRICS, SUMMARY, RunDir

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
    step_offset: int = 0  # steps of the runs it continues (one global step axis in plots)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of every record that logged a finite ``key``; steps on the global
        axis (``step_offset`` + the run's own step)."""
        pts = [(r["step"] + self.step_offset, float(r[key])) for r in self.records
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
    resolved = [storage.path(p) for p in paths]
    names = [p.name for p in resolved]
    names = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in resolved]
    runs = [load_run(p, n) for p, n in zip(resolved, names)]
    _chain_offsets(runs)
    return runs


def _chain_offsets(runs: list[Run]) -> None:
    """A run whose ``train.init_from`` is another run of the report starts where that one
    ended: continuation arms are drawn after the pretraining steps, on one step axis."""
    by_path = {os.fspath(run.path): run for run in runs}

    def offset(run: Run, seen: frozenset) -> int:
        init = (run.config.get("train") or {}).get("init_from") or ""
        parent = by_path.get(os.fspath(storage.path(init))) if init else None
        if parent is None or parent.name in seen:
            return 0
        end = int(parent.summary.get("steps") or max((r["step"] for r in parent.records), default=0))
        return offset(parent, seen | {run.name}) + end

    for run in runs:
        run.step_offset = offset(run, frozenset())
