"""The DoReMi workflow (Xie et al. 2023): reference -> proxy (Group DRO) -> alpha_bar -> main run.

Layout under ``cfg.run_dir`` (each stage is an ordinary training run dir, skipped when finished
for the same config and resumed from its checkpoints when interrupted)::

    round1/reference   training on doremi.reference_weights (or doremi.reference: a ready checkpoint)
    round1/proxy       same-size model, uniform stratified mixture, DoReMiObjective;
                       round1/proxy/domain_weights.json {"average": alpha_bar, "final": alpha_T}
    roundK/...         iterated DoReMi: roundK/reference trains on round K-1's alpha_bar
    domain_weights.json   the last round's weights (what data.weights of the main run reads)
    main               train.steps on alpha_bar          baseline   same budget on reference_weights
    doremi_report.json    weights per round and the per-domain held-out comparison

Reference and proxy start from the same point (:func:`start_point`): from scratch by default,
both from ``train.init_from`` with ``doremi.init_from = "train.init_from"``. Main and baseline
runs start from ``train.init_from`` as configured.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Callable

import numpy as np

from cpt_jax import config as config_lib
from cpt_jax import configure, storage
from cpt_jax.data.mixture import parse_weights
from cpt_jax.data.pipeline import Catalog, TrainData, domain_lists
from cpt_jax.errors import UserError
from cpt_jax.experiment import is_finished, read_summary
from cpt_jax.run_dir import RunDir

Log = Callable[[str], None]
STAGES = ("all", "reference", "proxy", "main", "baseline", "report")
WEIGHTS = "domain_weights.json"  # a proxy's alpha_bar and alpha_T; the last round's at the top
REPORT = "doremi_report.json"


def stage_config(cfg: Any, run_dir: Any, weights: str, steps: int, proxy: bool = False) -> Any:
    """``cfg`` with another run dir, mixture and step count (validated). Only the proxy keeps
    the ``doremi`` section: changing eta or c must not invalidate finished reference runs."""
    out = copy.deepcopy(cfg)
    with out.unlocked():
        if not proxy:
            out.doremi = config_lib.defaults().doremi
        out.run_dir = os.fspath(run_dir)
        out.data.weights = weights
        out.data.phases = ""
        out.train.steps = int(steps or cfg.train.steps)
    configure.validate(out)
    return out


def _train(cfg: Any, what: str, log: Log, objective: Any = None) -> dict:
    if is_finished(cfg):
        log(f"{what}: finished earlier ({cfg.run_dir}), skipped")
    else:
        from cpt_jax.train.loop import run

        log(f"{what}: {cfg.train.steps} steps -> {cfg.run_dir}")
        summary = run(cfg, objective=objective)
        if summary.get("interrupted"):
            raise UserError(f"{what} interrupted at step {summary['steps']}; run again to resume")
    return read_summary(cfg.run_dir)


def start_point(cfg: Any) -> str:
    """The ``train.init_from`` of reference and proxy alike: "" (scratch from ``seed``) unless
    ``doremi.init_from = "train.init_from"``. Xie et al. train both at the same size from the
    same initialisation, so the excess loss measures what is learnable, not pretrained vs fresh."""
    return cfg.train.init_from if cfg.doremi.init_from == "train.init_from" else ""


def _starting_at(stage: Any, cfg: Any) -> Any:
    with stage.unlocked():
        stage.train.init_from = start_point(cfg)
    return stage


def reference_config(cfg: Any, k: int) -> Any:
    """Round k's reference run: ``reference_weights`` in round 1, round k-1's alpha_bar after."""
    root = storage.path(cfg.run_dir)
    weights = cfg.doremi.reference_weights if k == 1 else os.fspath(weights_path(cfg, k - 1))
    return _starting_at(stage_config(cfg, root / f"round{k}" / "reference", weights,
                                     cfg.doremi.reference_steps), cfg)


def proxy_config(cfg: Any, k: int) -> Any:
    """Round k's proxy run: the proxy mixture, the DoReMi section, the reference's start."""
    return _starting_at(stage_config(cfg, storage.path(cfg.run_dir) / f"round{k}" / "proxy",
                                     cfg.doremi.proxy_weights, cfg.doremi.proxy_steps,
                                     proxy=True), cfg)


def weights_path(cfg: Any, k: int) -> Any:
    return storage.path(cfg.run_dir) / f"round{k}" / "proxy" / WEIGHTS


def reference_source(cfg: Any, k: int, log: Log) -> str:
    """Path of round k's reference params (trained here unless doremi.reference names one)."""
    if k == 1 and cfg.doremi.reference:
        if not storage.path(cfg.doremi.reference).exists():
            raise UserError(f"doremi.reference {cfg.doremi.reference} does not exist")
        log(f"round {k} reference: {cfg.doremi.reference} (given)")
        return cfg.doremi.reference
    ref = reference_config(cfg, k)
    _train(ref, f"round {k} reference", log)
    # the step this config trained to (a run dir's "latest" could be a stray later step)
    return os.fspath(RunDir(ref.run_dir).step_dir(ref.train.steps))


def run_proxy(cfg: Any, k: int, reference: str, log: Log) -> dict[str, dict[str, float]]:
    """Round k's proxy run with the DoReMi objective; writes and returns domain_weights.json."""
    from cpt_jax import doremi
    from cpt_jax.model import pythia
    from cpt_jax.model.checkpoint import load_params

    pc = proxy_config(cfg, k)
    out = weights_path(cfg, k)
    if is_finished(pc) and out.is_file():
        log(f"round {k} proxy: finished earlier ({pc.run_dir}), skipped")
        return storage.read_json(out)
    data = TrainData.from_config(pc)
    domains = data.domains
    ref_params, ref_config = load_params(reference)
    mcfg = pythia.PythiaConfig.from_config(pc.model)
    if ref_config.vocab_size != mcfg.vocab_size:
        raise UserError(
            f"reference {reference} has vocabulary {ref_config.vocab_size}, the proxy {mcfg.vocab_size}"
        )
    d = cfg.doremi
    objective = doremi.DoReMiObjective(
        mcfg, len(domains), ref_params, d.eta, d.c, d.normalization, absent=d.absent,
        domains=domains, micro_batches=pc.train.micro_batches,
        sampling=data.plan.weights[0],  # the proxy's fixed mixture (divides "token" weights)
        reference_config=dataclasses.replace(  # the reference runs with the proxy's numerics
            ref_config, compute_dtype=mcfg.compute_dtype, attention=mcfg.attention,
            attention_chunk=mcfg.attention_chunk, remat=mcfg.remat),
    )
    _train(pc, f"round {k} proxy (DoReMi, eta={d.eta}, c={d.c}, {d.normalization})", log, objective)
    weights = final_weights(pc.run_dir, domains, pc.train.steps)
    storage.write_json(out, weights)
    return weights


def final_weights(run_dir: Any, domains: list[str], steps: int) -> dict[str, dict[str, float]]:
    """alpha_bar and alpha_T from the proxy's DoReMi state as saved at ``steps`` (only the
    ``doremi/...`` leaves of the checkpoint's extras are read, not the reference params)."""
    from cpt_jax import doremi, tree_io

    item = RunDir(run_dir).step_dir(steps) / "extras"
    if not item.is_dir():
        raise UserError(f"{run_dir} holds no DoReMi state at step {steps} (no checkpoints/{steps}/extras)")
    leaves = [k for k in tree_io.leaf_specs(item) if k.startswith("doremi/")]
    state = tree_io.unflatten(tree_io.restore_numpy(item, leaves))["doremi"]
    return doremi.weights_json(state, domains)


def max_change(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[n] - b[n]) for n in a)


def run_rounds(cfg: Any, log: Log, stage: str = "all") -> list[dict]:
    """Rounds 1..R of reference + proxy; stops early when alpha_bar moves < doremi.tolerance."""
    rounds: list[dict] = []
    for k in range(1, cfg.doremi.rounds + 1):
        reference = reference_source(cfg, k, log)
        if stage == "reference" and k == 1:
            return rounds
        weights = run_proxy(cfg, k, reference, log)
        rounds.append(weights)
        if k > 1:
            change = max_change(weights["average"], rounds[-2]["average"])
            log(f"round {k}: max |alpha_bar - previous| = {change:.4g}")
            if change < cfg.doremi.tolerance:
                log(f"round {k}: below doremi.tolerance {cfg.doremi.tolerance}, stopping")
                break
    storage.write_json(storage.path(cfg.run_dir) / WEIGHTS, rounds[-1])
    return rounds


def main_configs(cfg: Any) -> tuple[Any, Any, bool]:
    """(main, baseline, baseline_is_reference): the baseline is round 1's reference run when
    that run is the same training (weights, steps, start), so it is not trained twice."""
    root = storage.path(cfg.run_dir)
    main = stage_config(cfg, root / "main", os.fspath(root / WEIGHTS), cfg.train.steps)
    base = stage_config(cfg, root / "baseline", cfg.doremi.reference_weights, cfg.train.steps)
    ref = reference_config(cfg, 1)
    same = (not cfg.doremi.reference and ref.train.steps == base.train.steps
            and ref.train.init_from == base.train.init_from)
    return main, (ref if same else base), same


def compare(main: dict, base: dict, main_dir: Any, domains: list[str]) -> dict:
    """Per-domain held-out loss of DoReMi vs baseline, average, worst domain, and the first
    evaluated step at which DoReMi's average reached the baseline's final average."""
    m = {n: float(main["final_eval"][n]["loss"]) for n in domains}
    b = {n: float(base["final_eval"][n]["loss"]) for n in domains}
    out = {"domains": {n: {"baseline": b[n], "doremi": m[n]} for n in domains},
           "average": {"baseline": float(np.mean(list(b.values()))), "doremi": float(np.mean(list(m.values())))},
           "worst": {"baseline": max(b.values()), "doremi": max(m.values())}}
    reached = None
    for rec in RunDir(main_dir).read_metrics():
        if "eval/avg/loss" in rec and rec["eval/avg/loss"] <= out["average"]["baseline"]:
            reached = rec["step"]
            break
    out["steps_to_baseline_average"] = reached
    return out


def weights_table(reference: dict[str, float], rounds: list[dict]) -> str:
    names = list(rounds[0]["average"]) if rounds else list(reference)
    head = "| domain | reference mix | " + " | ".join(
        f"round {k + 1} alpha_bar | round {k + 1} alpha_T" for k in range(len(rounds))) + " |"
    lines = [head, "|---" * (2 + 2 * len(rounds)) + "|"]
    for n in names:
        cells = [f"{reference.get(n, float('nan')):.4f}"]
        for r in rounds:
            cells += [f"{r['average'][n]:.4f}", f"{r['final'][n]:.4f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(cmp: dict) -> str:
    lines = ["| domain | baseline loss | DoReMi loss | change |", "|---|---|---|---|"]
    rows = list(cmp["domains"].items()) + [("average", cmp["average"]), ("worst domain", cmp["worst"])]
    for n, r in rows:
        lines.append(f"| {n} | {r['baseline']:.4f} | {r['doremi']:.4f} | {r['doremi'] - r['baseline']:+.4f} |")
    s = cmp["steps_to_baseline_average"]
    lines.append("")
    lines.append(f"DoReMi reached the baseline's final average loss at step {s}" if s is not None
                 else "DoReMi did not reach the baseline's final average loss at an evaluated step")
    return "\n".join(lines)


def run_workflow(cfg: Any, stage: str = "all", log: Log = print) -> dict:
    """Every stage in order (or one); returns and writes ``doremi_report.json``."""
    if stage not in STAGES:
        raise UserError(f"stage '{stage}' is not one of {', '.join(STAGES)}")
    catalog = Catalog.from_config(cfg)
    data = TrainData(cfg.train, catalog)
    names, members, _ = domain_lists(cfg.data, catalog)
    src = "synthetic source" if cfg.data.source == "synthetic" else cfg.data.dir
    log(f"DoReMi over {len(data.domains)} domains ({', '.join(data.domains)}) from the {src}")
    ref_w = parse_weights(cfg.doremi.reference_weights, names, members, catalog.tokens,
                          "doremi.reference_weights")
    report: dict = {"domains": data.domains, "reference_weights": dict(zip(names, map(float, ref_w)))}
    if stage in ("all", "reference", "proxy"):
        report["rounds"] = run_rounds(cfg, log, stage)
        if stage != "all":
            return report
    else:
        report["rounds"] = _saved_rounds(cfg)
    log("domain weights:\n" + weights_table(report["reference_weights"], report["rounds"]))
    main, base, base_is_ref = main_configs(cfg)
    summaries = {}
    if cfg.doremi.main and stage in ("all", "main"):
        summaries["main"] = _train(main, "main run on alpha_bar", log)
    if cfg.doremi.baseline and stage in ("all", "baseline"):
        what = "baseline (= round 1 reference)" if base_is_ref else "baseline"
        summaries["baseline"] = _train(base, what, log)
    if stage in ("all", "report") and is_finished(main) and is_finished(base):
        cmp = compare(read_summary(main.run_dir), read_summary(base.run_dir), main.run_dir, data.domains)
        report["comparison"] = cmp
        log("held-out loss, DoReMi vs baseline (same steps):\n" + comparison_table(cmp))
    storage.write_json(storage.path(cfg.run_dir) / REPORT, report)
    return report


def _saved_rounds(cfg: Any) -> list[dict]:
    rounds = []
    for k in range(1, cfg.doremi.rounds + 1):
        path = weights_path(cfg, k)
        if not path.is_file():
            break
        rounds.append(storage.read_json(path))
    if not rounds:
        raise UserError(f"no DoReMi weights under {cfg.run_dir} yet: run the proxy stage first")
    return rounds
