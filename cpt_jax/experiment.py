"""Multi-run experiments: one config file, several runs that may continue from one another.

An experiment file is an ordinary config file (``get_config()`` gives the settings every run
shares) that also defines ``get_runs(cfg) -> list[dict]``. Each run is

    {"name": "rewarm_3e-3",              # its directory under the experiment's run_dir
     "from": "pretrain",                 # optional: start from that run's final params
     "set": {"optim.peak_lr": 3e-3, ...}} # config keys that differ from the shared ones

A run that continues from another gets ``train.init_from`` = that run's directory (its latest
checkpoint's params, fresh optimizer state: the continual-pretraining start). Runs execute in
order; a run whose ``summary.json`` exists with the same resolved config is skipped, so an
interrupted experiment picks up where it stopped (an unfinished run resumes from its own
checkpoint). ``learning_forgetting`` then tabulates, for every continuation, the loss on the
downstream domains (learning) and on the upstream ones (forgetting) against its starting run.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Callable

from ml_collections import ConfigDict

from cpt_jax import config as config_lib
from cpt_jax import configure, storage
from cpt_jax.errors import UserError
from cpt_jax.run_dir import CONFIG, SUMMARY, RunDir

RunFn = Callable[[ConfigDict], dict]


def load_experiment(path: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[ConfigDict, list[dict]]:
    """The shared config (overrides applied, validated) and the list of runs of an experiment file."""
    shared, module = configure.load_with_module(path, overrides)
    if not hasattr(module, "get_runs"):
        raise UserError(f"{path} defines no get_runs(cfg): it is a single-run config, use `cpt-jax train`")
    runs = module.get_runs(shared)
    _check_runs(runs, path)
    return shared, runs


def _check_runs(runs: Any, path: str) -> None:
    if not isinstance(runs, list) or not runs:
        raise UserError(f"{path}: get_runs must return a non-empty list of dicts")
    seen: set[str] = set()
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("name"), str) or not run["name"]:
            raise UserError(f"{path}: run {i} needs a 'name'")
        extra = set(run) - {"name", "from", "set"}
        if extra:
            raise UserError(f"{path}: run '{run['name']}' has unknown field(s) {sorted(extra)}")
        if run["name"] in seen:
            raise UserError(f"{path}: run name '{run['name']}' appears twice")
        parent = run.get("from")
        if parent is not None and parent not in seen:
            raise UserError(f"{path}: run '{run['name']}' continues from '{parent}', "
                            "which is not an earlier run")
        seen.add(run["name"])


def run_config(shared: ConfigDict, run: dict, root: str | os.PathLike) -> ConfigDict:
    """The resolved config of one run: shared keys, the run's ``set`` keys, its dir and start."""
    cfg = copy.deepcopy(shared)
    for key, value in run.get("set", {}).items():
        config_lib.set_value(cfg, key, as_text(value))
    with cfg.unlocked():
        cfg.run_dir = os.fspath(storage.path(root) / run["name"])
        if run.get("from"):
            cfg.train.init_from = os.fspath(storage.path(root) / run["from"])
    configure.validate(cfg)
    return cfg


def as_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def is_finished(cfg: ConfigDict) -> bool:
    """A run is done when its summary says it reached ``train.steps`` uninterrupted, and it
    was written for this config (every key it saved has today's value; keys added to cpt-jax
    since then are not held against it)."""
    run = RunDir(cfg.run_dir)
    try:
        saved = run.read_json(CONFIG)
        if not isinstance(saved, dict) or run.finished_summary(cfg.train.steps, need_checkpoint=False) is None:
            return False
    except UserError:  # a corrupt record: run it again (it resumes from its checkpoints)
        return False
    return _agrees(saved, json.loads(json.dumps(config_lib.to_dict(cfg))))


def _agrees(saved: Any, current: Any) -> bool:
    if isinstance(saved, dict) and isinstance(current, dict):
        return all(k in current and _agrees(v, current[k]) for k, v in saved.items())
    return saved == current


def run_experiment(shared: ConfigDict, runs: list[dict], run_fn: RunFn | None = None,
                   log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run (or skip, when finished) every run in order; returns ``{name: summary}``."""
    if run_fn is None:
        from cpt_jax.train.loop import run as run_fn  # noqa: PLC0415 (jax import on demand)
    root = shared.run_dir
    summaries: dict[str, dict] = {}
    for i, run in enumerate(runs):
        cfg = run_config(shared, run, root)
        start = f" from '{run['from']}'" if run.get("from") else ""
        if is_finished(cfg):
            log(f"[{i + 1}/{len(runs)}] {run['name']}: finished earlier, skipped")
        else:
            log(f"[{i + 1}/{len(runs)}] {run['name']}{start}: {cfg.train.steps} steps")
            run_fn(cfg)
        summaries[run["name"]] = read_summary(cfg.run_dir)
    return summaries


def read_summary(run_dir: str | os.PathLike) -> dict:
    summary = RunDir(run_dir).read_json(SUMMARY)
    if summary is None:
        raise UserError(f"run {run_dir} has no summary.json (did it finish?)")
    return summary


def domain_losses(summary: dict) -> dict[str, float]:
    """Final held-out loss per domain from a run summary."""
    return {d: float(v["loss"]) for d, v in (summary.get("final_eval") or {}).items()}


def step0_losses(summary: dict) -> dict[str, float]:
    """Held-out loss per domain at step 0 of a run (logged when it starts from ``train.init_from``
    with ``train.eval_every`` > 0); empty when the run has none."""
    run_dir = summary.get("run_dir")
    if not run_dir:
        return {}
    for rec in RunDir(run_dir).read_metrics():
        if rec.get("step") == 0:
            return {k.split("/")[1]: float(v) for k, v in rec.items()
                    if k.startswith("eval/") and k.endswith("/loss") and k.count("/") == 2
                    and isinstance(v, (int, float))}
    return {}


def mean_loss(losses: dict[str, float], domains: list[str]) -> float:
    vals = [losses[d] for d in domains if d in losses]
    return sum(vals) / len(vals) if vals else float("nan")


def learning_forgetting(summaries: dict[str, dict], runs: list[dict], upstream: list[str],
                        downstream: list[str]) -> list[dict]:
    """Per continuation: downstream loss (learning) and upstream loss (forgetting), before -> after.

    ``forgetting`` = upstream loss after - before (> 0: the model forgot), ``learning`` =
    downstream loss before - after (> 0: the model learned), both means over the named domains.
    "Before" is the parent run's final eval, or for a run started from a checkpoint outside the
    experiment (``train.init_from``, with ``train.eval_every`` > 0) its own step-0 eval.
    """
    rows = []
    for run in runs:
        summary = summaries[run["name"]]
        if run.get("from"):
            before, origin = domain_losses(summaries[run["from"]]), run["from"]
        else:  # started from a checkpoint (e.g. a Hugging Face Pythia): its step-0 eval
            before, origin = step0_losses(summary), "step 0"
            if not before:
                continue
        after = domain_losses(summary)
        up0, up1 = mean_loss(before, upstream), mean_loss(after, upstream)
        down0, down1 = mean_loss(before, downstream), mean_loss(after, downstream)
        rows.append({"run": run["name"], "from": origin,
                     "upstream_before": up0, "upstream_after": up1, "forgetting": up1 - up0,
                     "downstream_before": down0, "downstream_after": down1,
                     "learning": down0 - down1})
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of ``learning_forgetting`` rows."""
    head = ("| run | upstream loss (before -> after) | forgetting | "
            "downstream loss (before -> after) | learning |")
    lines = [head, "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['upstream_before']:.3f} -> {r['upstream_after']:.3f} | "
            f"{r['forgetting']:+.3f} | {r['downstream_before']:.3f} -> "
            f"{r['downstream_after']:.3f} | {r['learning']:+.3f} |")
    return "\n".join(lines)
