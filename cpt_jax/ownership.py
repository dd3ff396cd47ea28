"""Which verb owns an output folder: nothing writes over what another verb (or a training run) made.

``convert``, ``average`` and ``vocab extend`` call ``claim(target, verb, force)`` before they
write anything. It refuses, in one line, a target that is a training run directory (its
checkpoints, metrics, summary or lease are there) or a folder holding files that this verb did
not write; with ``force`` it writes anyway. A claimed folder holds ``.cpt_jax_origin.json``
(``{"by": verb}``), so running the same verb again on its own output is allowed: replacing a
checkpoint a verb made is what re-running it means.
"""

from __future__ import annotations

import os
import time
from typing import Any

from cpt_jax import storage
from cpt_jax.errors import UserError
from cpt_jax.run_dir import CHECKPOINTS, LEASE, METRICS, SUMMARY

ORIGIN = ".cpt_jax_origin.json"
RUN_MARKERS = (CHECKPOINTS, METRICS, SUMMARY, LEASE)


def is_run_dir(path: Any) -> bool:
    """A training run wrote here: its checkpoints, metrics, summary or lease exist."""
    path = storage.path(path)
    return any((path / name).exists() for name in RUN_MARKERS)


def origin(path: Any) -> str | None:
    """The verb that claimed ``path`` (None when none did or the record is unreadable)."""
    try:
        rec = storage.read_json(storage.path(path) / ORIGIN, missing_ok=True)
    except UserError:
        return None
    return rec.get("by") if isinstance(rec, dict) else None


def check(target: Any, verb: str, force: bool = False) -> None:
    """Refuse (one ``UserError`` line) to write ``verb``'s output to ``target`` when it is a
    run directory, not a folder, or holds files ``verb`` did not write; ``force`` skips the
    ownership part (a file where the folder should be is always refused)."""
    path = storage.path(target)
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"output {target} already exists and is not a folder")
    if force:
        return
    if is_run_dir(path):
        raise UserError(f"output {target} is a training run directory: {verb} does not write "
                        "into it (pass --force to write there anyway)")
    if origin(path) == verb:
        return
    from cpt_jax.model.checkpoint import STAGING  # what an interrupted save left: not a file of its own

    others = sorted(c.name for c in path.iterdir() if c.name not in (STAGING, ORIGIN))
    if others:
        made = origin(path)
        by = f"written by {made}" if made else f"not written by {verb}"
        raise UserError(f"output {target} holds files {by} ({', '.join(others[:3])}"
                        f"{', ...' if len(others) > 3 else ''}): use an empty or new folder, "
                        "or pass --force to overwrite")


def claim(target: Any, verb: str, force: bool = False) -> None:
    """``check``, then record ``verb`` as the folder's owner (creating the folder)."""
    check(target, verb, force)
    path = storage.path(target)
    path.mkdir(parents=True, exist_ok=True)
    storage.write_json(path / ORIGIN, {"by": verb, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                         time.gmtime()),
                                       "pid": os.getpid()})
