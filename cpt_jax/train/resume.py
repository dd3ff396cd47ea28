"""Opening a run directory for training: one writer, the same experiment, a readable checkpoint.

``open_run`` refuses a finished run whose checkpoints are gone, takes the directory's lease
(``cpt_jax.lease``), checks that every process sees the same directory, moves empty or cut-short
step folders aside, finds the newest complete step, says whether the run starts, resumes or is
already finished, and records the config (refusing a resume that would change what the
checkpoint means; ``cpt_jax.run_dir.record_config``). Process 0 makes each of these decisions
and broadcasts them. ``restore_newest`` restores the newest step and falls back, with one line,
to the one before when it cannot be read or fails its integrity check.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from typing import Any, Callable

import jax
import numpy as np

from cpt_jax.config import to_dict
from cpt_jax.errors import UserError
from cpt_jax.lease import Lease
from cpt_jax.run_dir import LEASE, SUMMARY, RunDir, check_config, record_config
from cpt_jax.train.collective import everywhere, from_main, on_all

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclasses.dataclass
class OpenedRun:
    run: RunDir
    lease: Lease | None
    resumed: int | None  # newest complete step, None for a fresh start
    finished: dict[str, Any] | None  # the stored summary when there is nothing left to do

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None


def check_shared(run: RunDir) -> None:
    """With several processes, every one must see the files process 0 writes in ``run``
    (otherwise checkpoints never commit): a one-line error names the run dir."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    token = uuid.uuid4().int % (2**31)
    token = int(multihost_utils.broadcast_one_to_all(np.int32(token)))
    probe = run.file(f".shared_probe.{token}")
    if jax.process_index() == 0:
        probe.write_text(str(token))
    multihost_utils.sync_global_devices("cpt_jax_shared_probe_written")
    sees = probe.exists() and probe.read_text() == str(token)
    seen = multihost_utils.process_allgather(np.int32(sees))
    multihost_utils.sync_global_devices("cpt_jax_shared_probe_read")
    if jax.process_index() == 0:
        probe.unlink()
    if not np.all(seen):
        blind = [int(i) for i in np.flatnonzero(np.asarray(seen) == 0)]
        raise UserError(f"run_dir {run} is not shared between hosts (process(es) {blind} cannot "
                        "see process 0's files): use a shared filesystem or a gs:// run_dir")


def open_run(cfg: Any, log: Log = _stderr) -> OpenedRun:
    """Lease, shared-directory check, resume point and config record of ``cfg.run_dir``."""
    run = RunDir(cfg.run_dir)
    main = jax.process_index() == 0
    run.check_layout()  # before the lease: nothing is written into a damaged layout
    lease, error = None, ""
    if main:
        try:  # a finished run is refused before anything (even the lease) is written
            _check_not_finished(run, int(cfg.train.steps), bool(cfg.train.get("force", False)))
            run.root.mkdir(parents=True, exist_ok=True)
            lease = Lease(run.file(LEASE), cfg.train.lease_timeout_s, log)
            lease.acquire()
        except UserError as err:
            lease, error = None, str(err)
    on_all(not error, error or f"process 0 could not take the lease of {run}")
    opened = OpenedRun(run, lease, None, None)
    try:
        check_shared(run)
        total = int(cfg.train.steps)
        error = ""
        if main:  # process 0 decides: the resume point, the record, whether anything is left
            try:
                _record(run, to_dict(cfg), opened, total, bool(cfg.train.allow_config_change),
                        bool(cfg.train.get("force", False)), log)
            except UserError as err:
                error = str(err)
        on_all(not error, error or f"process 0 refused to open {run} (its error is in its log)")
        resumed = from_main(-1 if opened.resumed is None else opened.resumed)
        opened.resumed = None if resumed < 0 else resumed
        if not from_main(int(opened.finished is not None)):
            opened.finished = None
        elif opened.finished is None:
            opened.finished = run.finished_summary(total, need_checkpoint=False) or {"steps": total}
    except BaseException:
        opened.close()
        raise
    return opened


def _check_not_finished(run: RunDir, total: int, force: bool) -> None:
    """A run whose summary says it finished, but whose final checkpoint is gone, is refused
    (nothing to do) unless ``force``."""
    if force or run.finished_summary(total, need_checkpoint=False) is None:
        return
    newest = run.latest_step()
    if newest != total:
        raise UserError(
            f"{run} finished at step {total} earlier ({SUMMARY} says so), but its final checkpoint "
            f"is gone (newest: {newest}): nothing to do; `train --force` (or train.force=True) "
            "trains it again from there")


def _record(run: RunDir, current: dict, opened: OpenedRun, total: int, allow: bool, force: bool,
            log: Log) -> None:
    """Process 0: the start/resume line and the config record (or the finished line)."""
    for step in run.incomplete_steps():  # they would block the save of their step
        moved = run.set_aside(step, "incomplete")
        log(f"checkpoint step {step} is empty or incomplete: moved to {moved.name}")
    opened.resumed = run.latest_step()
    if opened.resumed is not None and opened.resumed > total:
        raise UserError(
            f"{run} holds a checkpoint at step {opened.resumed}, past train.steps = "
            f"{total}: raise train.steps to continue it, or use a new run_dir")
    opened.finished = run.finished_summary(total)
    _check_not_finished(run, total, force)
    if opened.finished is not None:
        check_config(run, current, opened.resumed, allow)  # refused changes are refused here too
        log(f"{run} finished at step {total} earlier ({SUMMARY} is there): nothing to do")
        return
    record_config(run, current, opened.resumed, allow, log)
    log(f"resuming {run} from step {opened.resumed}" if opened.resumed is not None
        else f"starting {run}")


def restore_newest(ckpts: Any, run: RunDir, newest: int, target: Any, log: Log = _stderr
                   ) -> tuple[Any, dict[str, Any], int]:
    """Restore the newest complete step: process 0 chooses it, every process restores it. When
    it cannot be read or fails its integrity check on any process, all of them take the step
    before it; process 0 warns in one line and moves the bad step aside
    (``<step>.unreadable``, never deleted)."""
    main = jax.process_index() == 0
    steps = [s for s in run.complete_steps() if s <= newest] if main else []
    first_error: UserError | None = None
    tried: list[int] = []
    while True:
        left = [s for s in steps if s not in tried]
        step = from_main(left[-1] if left else -1)  # process 0 decides which step to try
        if step < 0:
            raise first_error or UserError(f"no checkpoint under {run.checkpoints} can be restored")
        try:
            state, meta = ckpts.restore(step, target)
            ok = True
        except UserError as err:
            first_error, ok = first_error or err, False
        if not everywhere(ok):  # every process restores the same step, or none does
            tried.append(step)
            first_error = first_error or UserError(f"step {step}: another process could not restore it")
            continue
        break
    if tried:
        for bad in tried if main else []:
            moved = run.set_aside(bad)
            log(f"checkpoint step {bad} cannot be restored ({_reason(first_error)}); moved "
                f"to {moved.name}, resuming from step {step}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("cpt_jax_set_aside")
        ckpts.reload()
    return state, meta, step


def _reason(err: UserError | None) -> str:
    text = str(err or "")
    return text.split(": ", 1)[1] if ": " in text else text
