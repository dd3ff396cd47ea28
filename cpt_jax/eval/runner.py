"""Evaluate one checkpoint: zero-shot tasks and per-domain held-out loss, as one JSON result.

Result layout (what ``cpt-jax eval --out`` writes and ``cpt-jax report`` reads as
``RUN/eval.json``)::

    {"checkpoint": str, "params": int, "seconds": float,
     "tasks":   {task: {"acc", "acc_norm", "n", "chance", "seconds"}},
     "domains": {domain: {"loss", "ppl", "tokens"}},
     "summary": {"avg": {...}, "worst": {...}, "upstream": {...}, "downstream": {...}},
     "harness": {task: {metric: value}}}   # lm-evaluation-harness tasks, when asked for
"""

from __future__ import annotations

import os
import time
from typing import Any

from cpt_jax.checks import comma_list
from cpt_jax.data.pipeline import Catalog, eval_sets
from cpt_jax.data.tokenizer import load_tokenizer, pythia_tokenizer
from cpt_jax.errors import UserError
from cpt_jax.eval import tasks as tasks_lib
from cpt_jax.run_dir import EVAL, RunDir, locate

RESULT_NAME = EVAL


def run_of(checkpoint: str | os.PathLike) -> RunDir | None:
    """The run when ``checkpoint`` is a run dir or one of its step dirs (``run_dir.locate``),
    else None."""
    found = locate(checkpoint)
    return found.run if found is not None else None


def _names(text: str) -> list[str]:
    return [t for t in comma_list(text) if t != "none"]


def evaluate_checkpoint(
    checkpoint: str,
    cfg: Any = None,
    tasks: str = "",
    domains: str | None = None,
    limit: int = 0,
    batch_size: int = 32,
    data_dir: str | None = None,
    tokenizer: str | None = None,
    log=print,
    harness: dict[str, Any] | None = None,
    allow_nonfinite: bool = False,
) -> dict[str, Any]:
    """Zero-shot ``tasks`` (comma names or JSONL paths) and, when ``cfg`` is given, the held-out
    loss of ``domains`` (comma names; ``None`` = every domain of ``cfg``'s data). ``harness``
    (``{"tasks": [names], "include": DIR or None, "fewshot": N or None}``) runs lm-evaluation-harness tasks on the
    same params; its whole result dict is returned under ``"harness_raw"``. NaN or inf weights
    are refused unless ``allow_nonfinite``."""
    from cpt_jax.eval import multiple_choice, perplexity
    from cpt_jax.model import checkpoint as ckpt_lib
    from cpt_jax.model import pythia

    start = time.perf_counter()
    task_names = _names(tasks)
    loaded = [tasks_lib.load_task(name, data_dir, limit) for name in task_names]  # fail early
    params, mcfg = ckpt_lib.load_params(checkpoint, allow_nonfinite=allow_nonfinite)
    params = multiple_choice.on_device(params)
    result: dict[str, Any] = {"checkpoint": os.fspath(checkpoint), "params": pythia.count_params(mcfg),
                              "tasks": {}, "domains": {}}
    if loaded:
        tok = load_tokenizer(tokenizer) if tokenizer else pythia_tokenizer(data_dir)
        for task in loaded:
            t0 = time.perf_counter()
            res = multiple_choice.evaluate_tasks(params, mcfg, [task], tok, batch_size)[task.name]
            res["seconds"] = round(time.perf_counter() - t0, 2)
            result["tasks"][task.name] = res
            log(f"  {task.name}: acc {res['acc']:.4f}  acc_norm {res['acc_norm']:.4f}  "
                f"(n={res['n']}, {res['seconds']:.1f}s)")
    if harness:
        result.update(run_harness(params, mcfg, checkpoint, harness, tokenizer, batch_size, limit, log))
    if cfg is not None and domains != "none":
        wanted = None if domains is None else _names(domains)
        sets = eval_sets(cfg.train, Catalog.from_config(cfg), wanted)
        if not sets:
            raise UserError("no eval domain has a held-out window (check data.dir and train.seq_len)")
        result["domains"] = perplexity.evaluate(params, mcfg, sets,
                                                token_bytes=perplexity.token_bytes_for(cfg.data))
        result["summary"] = perplexity.summarize(
            result["domains"],
            [d for d in _names(cfg.data.upstream) if d in result["domains"]],
            [d for d in _names(cfg.data.downstream) if d in result["domains"]])
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def run_harness(params: Any, mcfg: Any, checkpoint: str, harness: dict[str, Any], tokenizer: str | None,
                batch_size: int, limit: int, log=print) -> dict[str, Any]:
    """``{"harness": {task: {metric: value}}, "harness_raw": lm-eval's result}`` for the params."""
    from cpt_jax.eval import harness as harness_lib

    harness_lib.require()
    lm = harness_lib.HarnessLM(checkpoint, params=params, config=mcfg, tokenizer=tokenizer,
                               batch_size=batch_size)
    raw = harness_lib.evaluate(lm, harness["tasks"], harness.get("include"), limit or None, harness.get("fewshot"))
    found = harness_lib.metrics(raw)
    for task, values in found.items():
        log(f"  harness {task}: " + "  ".join(f"{k} {v:.4f}" for k, v in values.items() if "stderr" not in k))
    return {"harness": found, "harness_raw": raw}


def format_table(result: dict[str, Any]) -> str:
    """Plain-text tables of the task scores and the per-domain losses."""
    lines = []
    if result.get("tasks"):
        lines.append(f"{'task':<16}{'n':>7}{'acc':>9}{'acc_norm':>10}{'chance':>9}")
        for name, r in result["tasks"].items():
            lines.append(f"{name:<16}{r['n']:>7}{r['acc']:>9.4f}{r['acc_norm']:>10.4f}{r['chance']:>9.4f}")
    if result.get("domains"):
        if lines:
            lines.append("")
        lines.append(f"{'domain':<16}{'tokens':>9}{'loss':>9}{'ppl':>11}")
        for name, r in result["domains"].items():
            lines.append(f"{name:<16}{r['tokens']:>9}{r['loss']:>9.4f}{r['ppl']:>11.2f}")
        s = result.get("summary", {})
        for group in ("avg", "worst", "upstream", "downstream"):
            if group in s:
                label = f"{group} ({s[group]['domain']})" if group == "worst" else group
                lines.append(f"{label:<25}{s[group]['loss']:>9.4f}{s[group]['ppl']:>11.2f}")
    if result.get("harness"):
        lines += [""] if lines else []
        lines.append(f"{'harness task':<24}{'metric':<24}{'value':>10}{'stderr':>10}")
        for task, values in result["harness"].items():
            for metric, v in values.items():
                if not metric.endswith("_stderr") and "_stderr," not in metric:
                    err = values.get(metric.replace(",", "_stderr,") if "," in metric else f"{metric}_stderr")
                    lines.append(f"{task:<24}{metric:<24}{v:>10.4f}" + (f"{err:>10.4f}" if err is not None else ""))
    return "\n".join(lines) if lines else "(nothing evaluated)"
