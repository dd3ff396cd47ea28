"""Stop signals for the training loop: finish the step, save, exit -- on every host at once.

SIGTERM, SIGHUP (a dropped ssh session) and SIGINT are recorded; the loop asks
:meth:`StopFlag.should_stop` after each step and saves a checkpoint before it stops. A second
signal ends the process at once (killed by that signal, no checkpoint) -- unless it is the same
signal within ``DUPLICATE_S`` of the first: one event delivered twice (SLURM and a VM shutdown
signal every process of a job, and a multi-process trainer's supervisor passes it on too).

With several processes they must all stop at the same step. When jax's distributed client runs
its preemption service (the default), that service owns SIGTERM; the first signal of any kind
is passed on to it, and ``multihost_utils.reached_preemption_sync_point`` (asked every step,
without a collective) makes every host stop at the first step all of them can reach. Without
that service, the processes agree through an all-gather at the loop's sync points (log,
eval and checkpoint steps).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from typing import Any

import jax
import numpy as np

SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGHUP", "SIGINT")
DUPLICATE_S = 1.0  # the same signal again this soon is the same event, delivered twice
_CODES = {name: i + 1 for i, name in enumerate(SIGNALS)}
_SA_SIGINFO = 4  # Linux
_SA_FLAGS_OFFSET = 8 + 128  # struct sigaction (glibc, 64-bit): handler, sigset_t (1024 bits), flags


class _ForeignHandler:
    """A C-level handler that something other than Python installed (jax's preemption
    notifier on SIGTERM): saved so that Python's handler can call it and put it back."""

    def __init__(self, signum: int, saved: ctypes.Array, address: int):
        self.signum, self._saved = signum, saved
        self._call = ctypes.CFUNCTYPE(None, ctypes.c_int)(address)

    @classmethod
    def find(cls, signum: int) -> _ForeignHandler | None:
        """The handler of ``signum`` when Python did not install it; None otherwise."""
        if not sys.platform.startswith("linux") or signal.getsignal(signum) not in (signal.SIG_DFL, None):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            saved = ctypes.create_string_buffer(256)
            if libc.sigaction(signum, None, saved) != 0:
                return None
        except (OSError, AttributeError):
            return None
        address = ctypes.c_void_p.from_buffer(saved).value or 0
        flags = ctypes.c_int.from_buffer(saved, _SA_FLAGS_OFFSET).value
        if address in (0, 1) or flags & _SA_SIGINFO:  # SIG_DFL / SIG_IGN / a 3-argument handler
            return None
        return cls(signum, saved, address)

    def notify(self) -> None:
        self._call(self.signum)

    def reinstall(self) -> None:
        ctypes.CDLL(None).sigaction(self.signum, self._saved, None)


def _preemption_manager() -> Any:
    """jax's preemption sync manager when the distributed client runs one, else None."""
    try:
        from jax._src import distributed

        state = distributed.global_state
        return state.preemption_sync_manager if state.client is not None else None
    except Exception:  # private API moved: use the all-gather
        return None


class StopFlag:
    """Records stop signals; the loop asks :meth:`should_stop` after every step."""

    def __init__(self, first_step: int = 0) -> None:
        """``first_step``: the step the run starts from; :meth:`should_stop` follows after
        each step (jax's preemption sync counts in steps, as orbax's checkpointer does)."""
        self.signal: str | None = None
        self._old: dict[int, Any] = {}
        self._foreign: _ForeignHandler | None = None
        self._preemption = False
        self._step = int(first_step)
        self._first_at = 0.0

    def install(self) -> None:
        """Take SIGTERM / SIGHUP / SIGINT (main thread only; elsewhere nothing is installed)."""
        if jax.process_count() > 1 and _preemption_manager() is not None:
            self._foreign = _ForeignHandler.find(signal.SIGTERM)
            self._preemption = self._foreign is not None
        for name in SIGNALS:
            sig = getattr(signal, name)
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers
                self._preemption = False
                break

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal == name and time.monotonic() - self._first_at < DUPLICATE_S:
            return  # the first one, delivered again (to this process and through its supervisor)
        if self.signal is not None:  # the second signal: stop now
            os.write(2, f"\n{name} again: exiting without a checkpoint\n".encode())
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)
        self.signal, self._first_at = name, time.monotonic()
        os.write(2, f"\n{name}: finishing the step and saving a checkpoint "
                    f"(send it again to exit at once)\n".encode())
        if self._foreign is not None:
            self._foreign.notify()  # starts jax's preemption sync on every host

    def restore(self) -> None:
        """Put the previous handlers back (jax's own SIGTERM handler included)."""
        for sig, old in self._old.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)
        if self._foreign is not None:
            self._foreign.reinstall()
        self._old = {}

    def should_stop(self, sync_point: bool) -> str | None:
        """The signal to stop for, agreed by all processes. With jax's preemption service they
        agree at any step; otherwise only at ``sync_point`` steps (log / checkpoint / eval
        steps, where the host waits for the devices anyway)."""
        if jax.process_count() == 1:
            return self.signal
        if self._preemption:
            from jax.experimental import multihost_utils

            self._step += 1
            if not multihost_utils.reached_preemption_sync_point(self._step):
                return None
            return self._agree() or "SIGTERM"  # a SIGTERM that reached only jax's handler
        return self._agree() if sync_point else None

    def _agree(self) -> str | None:
        """The last of :data:`SIGNALS` that any process received (a collective; SIGINT wins)."""
        from jax.experimental import multihost_utils

        codes = multihost_utils.process_allgather(np.int32(_CODES.get(self.signal or "", 0)))
        got = [c for c in np.asarray(codes).ravel().tolist() if c]
        return SIGNALS[max(got) - 1] if got else None
