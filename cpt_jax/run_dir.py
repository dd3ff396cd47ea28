"""The run directory: what every verb hands to the next, and the one place its layout lives.

::

    RUN/config.json           the resolved config in force (config.<step>.json: the one before
                              a resume at <step> changed it)
    RUN/model.json            the PythiaConfig fields
    RUN/metrics.jsonl         one JSON object per line with "step" (train log lines, eval lines)
    RUN/metrics.jsonl.bad     lines of metrics.jsonl that did not parse, moved here on resume
    RUN/summary.json          written when the run ends (finished or interrupted)
    RUN/eval.json             ``cpt-jax eval --out``
    RUN/lease.json            the lease of the run writing here (``cpt_jax.lease``)
    RUN/checkpoints/<step>/   orbax steps: params, opt_state, extras, ema, meta, lawa (meta holds
                              the run's record, the model and the arrays' digests)
    RUN/lawa/<step>/params    online LAWA snapshots (disk store)
    RUN/tensorboard/          TensorBoard events

``RUN`` is a local folder or ``gs://bucket/...`` (``cpt_jax.storage``). :func:`locate` says
what a path handed to a verb is: a run, one step of a run, a params checkpoint
(``model.json`` + ``params/``, what ``convert``, ``average`` and ``vocab extend`` write) or a
Hugging Face folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator, Literal

from cpt_jax import storage
from cpt_jax.errors import UserError

CONFIG = "config.json"
MODEL = "model.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL = "eval.json"
LEASE = "lease.json"
CHECKPOINTS = "checkpoints"
LAWA = "lawa"
TENSORBOARD = "tensorboard"
PARAMS_ITEM = "params"
PARAMS_POINTER = "params.current"  # a params checkpoint on gs://: names the params item in use

# keys whose change makes a checkpoint mean something else: refused on resume unless allowed
MEANING_KEYS = ("model.", "data.", "seed", "train.batch_size", "train.seq_len")
# keys that never matter to a resume
IGNORED_KEYS = ("run_dir", "train.allow_config_change", "train.force")


class RunDir:
    """Paths and records of one run directory (local or ``gs://``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = storage.path(root)

    def __repr__(self) -> str:
        return f"RunDir({os.fspath(self.root)!r})"

    def __str__(self) -> str:
        return os.fspath(self.root)

    def file(self, name: str) -> Any:
        return self.root / name

    @property
    def checkpoints(self) -> Any:
        return self.root / CHECKPOINTS

    @property
    def lawa(self) -> Any:
        return self.root / LAWA

    def step_dir(self, step: int) -> Any:
        return self.checkpoints / str(int(step))

    def is_run(self) -> bool:
        """A training run wrote here (its config and its checkpoints folder exist)."""
        return self.file(CONFIG).exists() and self.checkpoints.is_dir()

    def check_layout(self) -> None:
        """The run dir and its ``checkpoints`` entry are folders where they exist (one line)."""
        for entry in (self.root, self.checkpoints):
            if entry.exists() and not entry.is_dir():
                raise UserError(f"{entry} is not a folder: move it away or use another run_dir")

    # -- checkpoints --------------------------------------------------------------------

    def complete_steps(self) -> list[int]:
        """Steps whose orbax checkpoint is finalized and holds a params item, ascending.
        Half-written steps (orbax's temporary names, or no commit marker on object stores)
        are never listed."""
        import orbax.checkpoint as ocp

        self.check_layout()
        if not self.checkpoints.is_dir():
            return []
        steps = []
        for p in self.checkpoints.iterdir():
            if p.name.isdigit() and ocp.step.is_checkpoint_finalized(p) and (p / PARAMS_ITEM).is_dir():
                steps.append(int(p.name))
        return sorted(steps)

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        steps = self.complete_steps()
        return steps[-1] if steps else None

    def step_meta(self, step: int) -> dict[str, Any] | None:
        """The ``meta`` record of one step (None when missing or unreadable)."""
        try:
            meta = storage.read_json(self.step_dir(step) / "meta" / "metadata", missing_ok=True)
        except UserError:
            return None
        return meta if isinstance(meta, dict) else None

    def incomplete_steps(self) -> list[int]:
        """Step folders that are not complete checkpoints (empty, or cut short), ascending."""
        if not self.checkpoints.is_dir():
            return []
        complete = set(self.complete_steps())
        return sorted(int(p.name) for p in self.checkpoints.iterdir()
                      if p.name.isdigit() and int(p.name) not in complete)

    def set_aside(self, step: int, why: str = "unreadable") -> Any:
        """Move an unreadable (or incomplete) step out of the way (renamed ``<step>.<why>``,
        never deleted); returns its new path."""
        src, dst = self.step_dir(step), self.checkpoints / f"{step}.{why}"
        n = 1
        while dst.exists():
            n += 1
            dst = self.checkpoints / f"{step}.{why}{n}"
        src.rename(dst)
        return dst

    # -- JSON records ----------------------------------------------------------------------

    def read_json(self, name: str, missing_ok: bool = True) -> Any:
        return storage.read_json(self.file(name), missing_ok=missing_ok)

    def write_json(self, name: str, value: Any) -> None:
        storage.write_json(self.file(name), value)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics log as one record per step, ascending: the lines of a step merged, a
        later line's value winning (a step logged again after a resume replaces the old one)."""
        try:
            text = self.file(METRICS).read_text()
        except FileNotFoundError:
            return []
        return merge_by_step(parse_jsonl(text))

    def finished_summary(self, steps: int, need_checkpoint: bool = True) -> dict[str, Any] | None:
        """The summary of a run that reached ``steps`` uninterrupted (and, with
        ``need_checkpoint``, still holds its final checkpoint), else None."""
        summary = self.read_json(SUMMARY)
        if not isinstance(summary, dict) or summary.get("interrupted") or summary.get("steps") != steps:
            return None
        return summary if not need_checkpoint or self.latest_step() == steps else None


Kind = Literal["params", "run", "step", "hf"]


@dataclasses.dataclass(frozen=True)
class Location:
    """What :func:`locate` found: a params checkpoint, a run, one step of a run (``run`` and
    ``step`` name it) or a Hugging Face folder; ``path`` is the ``storage`` path."""

    kind: Kind
    path: Any
    run: RunDir | None = None
    step: int | None = None

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.path)

    @property
    def model_root(self) -> Any:
        """The folder whose ``model.json`` describes the model (None for Hugging Face)."""
        if self.kind == "params":
            return self.path
        return self.run.root if self.run is not None else None


def locate(path: str | os.PathLike) -> Location | None:
    """What ``path`` (local or ``gs://``) is, from its entries alone (no weights read), in this
    order: a params checkpoint (``model.json`` and its params item), a run (a ``checkpoints/``
    folder), a step ``RUN/checkpoints/<step>`` holding params, a Hugging Face folder
    (``config.json``); None when it is no folder or none of these. Every reader of checkpoints
    asks this (as levanter's ``is_checkpoint_path`` answers for its checkpoints)."""
    p = storage.path(path)
    if not p.is_dir():
        return None
    if (p / MODEL).exists() and params_item(p).is_dir():
        return Location("params", p)
    if (p / CHECKPOINTS).is_dir():
        return Location("run", p, RunDir(p))
    if (p / PARAMS_ITEM).is_dir() and p.parent.name == CHECKPOINTS and p.name.isdigit():
        return Location("step", p, RunDir(p.parent.parent), int(p.name))
    if (p / CONFIG).exists():
        return Location("hf", p)
    return None


def params_item(path: Any) -> Any:
    """The params item of the params checkpoint ``path``: the one ``params.current`` names
    (written on object stores), else ``path/params``."""
    pointer = path / PARAMS_POINTER
    if not pointer.exists():
        return path / PARAMS_ITEM
    name = pointer.read_text().strip()
    if not name.startswith(f"{PARAMS_ITEM}.") or "/" in name:
        raise UserError(f"{pointer} does not name a params item (holds {name[:40]!r})")
    return path / name


def _lines_with_records(text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(line, record)`` for each line of a JSON-lines text holding an object with an integer
    ``step``; a torn line (hard kill) or any other damaged line is skipped."""
    for line in text.splitlines():
        rec = _record_of(line)
        if rec is not None:
            yield line, rec


def _record_of(line: str) -> dict[str, Any] | None:
    """The metrics record of one line, or None when it does not parse as one."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    step = rec.get("step") if isinstance(rec, dict) else None
    return rec if isinstance(step, int) and not isinstance(step, bool) else None


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """Records with a ``step`` of a JSON-lines text; a torn last line (hard kill) is skipped."""
    return [rec for _, rec in _lines_with_records(text)]


def merge_by_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[int, dict[str, Any]] = {}
    for rec in records:
        merged.setdefault(int(rec["step"]), {}).update(rec)
    return [merged[s] for s in sorted(merged)]


def trim_metrics(file: Path, last_step: int | None, log: Any = None) -> int:
    """Drop the lines of steps after ``last_step`` (all lines when None) from a local metrics
    file: what a run logged past its last checkpoint is logged again on resume. Lines that do
    not parse are moved to ``metrics.jsonl.bad`` with a one-line warning (never lost). Returns
    how many lines left the file."""
    if not file.is_file():
        return 0
    text = file.read_bytes().decode(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    keep = [line for line, rec in _lines_with_records(text)
            if last_step is not None and int(rec["step"]) <= last_step]
    bad = [line for line in lines if _record_of(line) is None]
    if bad:
        with open(f"{file}.bad", "a") as out:
            out.write("".join(f"{line}\n" for line in bad))
        (log or _stderr)(f"warning: {len(bad)} line(s) of {file} do not parse as metrics records: "
                         f"moved to {file.name}.bad")
    if len(keep) != len(text.splitlines()):
        storage.write_text(file, "".join(f"{line}\n" for line in keep))
    return len(text.splitlines()) - len(keep)


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


# -- config history -------------------------------------------------------------------------


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` of a nested dict."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """``(refused, allowed)``: the differing keys as ``"key: old -> new"`` lines; refused ones
    change what the saved checkpoint means (``MEANING_KEYS``). A key that cpt-jax added since
    the run was saved is not a change."""
    old, new = flatten(saved), flatten(current)
    refused, allowed = [], []
    for key in sorted(set(old) | set(new)):
        if key in IGNORED_KEYS or key not in old:
            continue
        before, after = old.get(key, "(absent)"), new.get(key, "(absent)")
        if before == after:
            continue
        line = f"{key}: {before!r} -> {after!r}"
        (refused if _is_meaning(key) else allowed).append(line)
    return refused, allowed


def _is_meaning(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MEANING_KEYS)


def run_record(config: dict) -> dict[str, Any]:
    """The keys of a config that give a checkpoint its meaning (``MEANING_KEYS``), flattened:
    stored in every checkpoint step, so a resume is checked even without ``config.json``."""
    return {k: v for k, v in flatten(config).items() if _is_meaning(k)}


def _try_json(file: Any) -> Any:
    try:
        return storage.read_json(file, missing_ok=True)
    except UserError:
        return None


def _saved_config(run: RunDir, resumed: int) -> tuple[dict | None, str]:
    """What the run was started with: ``config.json``, else (missing or damaged) the record in
    the checkpoint step ``resumed``; ``(None, why)`` when neither can be read."""
    saved = _try_json(run.file(CONFIG))
    if isinstance(saved, dict):
        return saved, ""
    record = (run.step_meta(resumed) or {}).get("run")
    if isinstance(record, dict):
        return record, ""
    state = "missing" if not run.file(CONFIG).exists() else "damaged"
    return None, f"its {CONFIG} is {state} and checkpoint step {resumed} holds no run record"


def check_config(run: RunDir, current: dict, resumed: int | None,
                 allow_change: bool) -> tuple[dict | None, list[str]]:
    """The stored config and every change of ``current`` against it (``(None, [])`` for a fresh
    start); a change of a ``MEANING_KEYS`` key is refused in one line listing each difference,
    unless ``allow_change``."""
    if resumed is None:
        return None, []
    saved, why = _saved_config(run, resumed)
    if saved is None:
        if allow_change:
            return None, []
        raise UserError(f"cannot tell whether resuming {run} from step {resumed} changes what its "
                        f"checkpoint means: {why} (set train.allow_config_change=True to resume)")
    refused, allowed = config_changes(saved, current)
    if refused and not allow_change:
        raise UserError(
            f"resuming {run} from step {resumed} would change what its checkpoint means: "
            + "; ".join(refused) + " (use a new run_dir, or set train.allow_config_change=True)")
    return saved, refused + allowed


def record_config(run: RunDir, current: dict, resumed: int | None, allow_change: bool,
                  log: Any = print) -> None:
    """Write ``config.json`` for a run starting or resuming at ``resumed`` (``check_config``
    first); when a resume changed it, the previous config is kept as ``config.<resumed>.json``
    and the changes are printed."""
    saved, changes = check_config(run, current, resumed, allow_change)
    file = run.file(CONFIG)
    if resumed is not None and file.exists() and not isinstance(_try_json(file), dict):
        kept = run.file(f"{CONFIG}.damaged")
        storage.write_text(kept, file.read_bytes().decode(errors="replace"))
        log(f"{file} was damaged: kept as {kept.name}; checked against the record of step {resumed}")
    if saved is not None:
        if changes:
            log(f"config changed at step {resumed} (previous config kept as config.{resumed}.json): "
                + "; ".join(changes))
            run.write_json(f"config.{resumed}.json", saved)
    run.write_json(CONFIG, current)
