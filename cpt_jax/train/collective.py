"""Decisions made once and shared by every process of a run (no-ops with one process).

Process 0 decides what all processes must agree on -- the resume step, a refusal, whether a
checkpoint fits on the disk -- and these helpers broadcast the decision, so no process goes on
into a collective the others left.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from cpt_jax.errors import UserError


def from_main(value: int) -> int:
    """Process 0's ``value`` on every process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def on_all(ok: bool, why: str) -> None:
    """Raise on every process when process 0 (the one that decides) was not ``ok``."""
    if not from_main(int(ok)):
        raise UserError(why)


def everywhere(ok: bool) -> bool:
    """Whether ``ok`` holds on every process."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def main_checks(check: Callable[[], None], refusal: str) -> None:
    """Run ``check()`` on process 0 only; its UserError is raised on every process (the others
    with ``refusal``)."""
    error = ""
    if jax.process_index() == 0:
        try:
            check()
        except UserError as err:
            error = str(err)
    on_all(not error, error or refusal)
