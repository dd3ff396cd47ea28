"""Grid sweeps: a Cartesian product of runs, each finished run skipped, results in one CSV.

A sweep file is a config file (``get_config()``: what every run shares) that also defines

    def get_grid(cfg) -> dict[str, list]      # axis name -> values, e.g. {"size": [...], "r": [...]}
    def apply(point: dict) -> dict[str, Any]  # one grid point -> config keys to set
    def base_run(point: dict) -> dict | None  # optional: the run {"name", "set"} it continues

Every point of the product becomes a run named from its values under ``run_dir``; with
``base_run``, the distinct base runs (e.g. one pretrained model per size) run first and each point
continues from its base's final params. The runs go through ``cpt_jax.experiment`` (skipped
when finished with the same config). For the D-CPT law (``cpt_jax.dcpt``) each finished run
adds one CSV row: N (parameters), D (continual-pretraining tokens), r (the point's ``r``: the
domain's share of the mixture), the general loss (mean held-out loss over ``data.upstream``)
and the domain loss (over ``data.downstream``); a base run is the ``D = 0`` row of its size,
whose general loss is the pre-CPT loss L_g0 that ``dcpt ratio`` keeps within a tolerance.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import shlex
from typing import Any

from ml_collections import ConfigDict

from cpt_jax import configure, experiment, storage
from cpt_jax.checks import comma_list
from cpt_jax.dcpt import CSV_COLUMNS
from cpt_jax.errors import UserError

RESULTS = "results.csv"  # one D-CPT row per finished run, under the sweep's run_dir


def load_sweep(path: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[ConfigDict, list[dict]]:
    """The shared config and the sweep's runs (``{"name", "set", "point"[, "from"]}``), bases
    (``"point": None``) first, of a sweep file."""
    shared, module = configure.load_with_module(path, overrides)
    for name in ("get_grid", "apply"):
        if not hasattr(module, name):
            raise UserError(f"{path} defines no {name}(): not a sweep file")
    grid = module.get_grid(shared)
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(f"{path}: get_grid must return {{axis: non-empty list of values}}")
    bases: dict[str, dict] = {}
    runs = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        name = "_".join(f"{axis}{_slug(value)}" for axis, value in point.items())
        run = {"name": name, "set": dict(module.apply(point)), "point": point}
        parent = module.base_run(point) if hasattr(module, "base_run") else None
        if parent is not None:
            bases.setdefault(parent["name"], {"name": parent["name"],
                                              "set": dict(parent.get("set", {})), "point": None})
            run["from"] = parent["name"]
        runs.append(run)
    return shared, list(bases.values()) + runs


def _slug(value: Any) -> str:
    return str(value).replace("/", "-").replace(" ", "")


def commands(path: str, overrides: list[str], shared: ConfigDict, runs: list[dict]) -> list[str]:
    """One ``cpt-jax train`` command line per run, for a cluster scheduler (bases first: a
    continuation must wait for its base's job)."""
    lines = []
    for run in runs:
        root = storage.path(shared.run_dir)
        sets = {**run["set"], "run_dir": os.fspath(root / run["name"])}
        if run.get("from"):
            sets["train.init_from"] = os.fspath(root / run["from"])
        args = [f"--config.{k}={experiment.as_text(v)}" for k, v in sets.items()]
        lines.append(shlex.join(["cpt-jax", "train", "--config", path, *overrides, *args]))
    return lines


def result_row(cfg: ConfigDict, run: dict, summary: dict) -> dict:
    """The D-CPT CSV row of one finished run (a base run: D = 0, r = 0)."""
    from cpt_jax.model import pythia  # noqa: PLC0415 (jax import on demand)

    losses = experiment.domain_losses(summary)
    general = comma_list(cfg.data.upstream)
    domain = comma_list(cfg.data.downstream)
    return {
        "run": run["name"],
        "N": pythia.count_params(pythia.PythiaConfig.from_config(cfg.model)),
        "D": 0 if run["point"] is None else
        int(cfg.train.steps) * int(cfg.train.batch_size) * int(cfg.train.seq_len),
        "r": 0.0 if run["point"] is None else float(run["point"].get("r", float("nan"))),
        "general_loss": experiment.mean_loss(losses, general),
        "domain_loss": experiment.mean_loss(losses, domain),
    }


def run_sweep(shared: ConfigDict, runs: list[dict], run_fn=None) -> Any:
    """Run every point (skipping finished ones) and write ``RUN_DIR/results.csv`` (local or
    ``gs://``); returns its path."""
    summaries = experiment.run_experiment(shared, runs, run_fn)  # it ignores "point"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for run in runs:
        cfg = experiment.run_config(shared, run, shared.run_dir)
        writer.writerow(result_row(cfg, run, summaries[run["name"]]))
    out = storage.path(shared.run_dir) / RESULTS
    storage.write_text(out, text.getvalue())
    return out

