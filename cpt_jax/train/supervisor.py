"""A multi-process ``cpt-jax train`` runs its trainer as a child process and watches it.

When another process of the run dies or never arrives, jax's coordination service ends the
survivors with SIGABRT (134) and a C++ stack dump, or a collective fails with a Python
traceback. A restart loop (launch/tpu_vm.sh, a SLURM requeue, an operator) needs instead one
line naming the process and the exit code of a temporary failure (75, ``EX_TEMPFAIL``), on
every launcher. The supervisor

* runs ``python -m cpt_jax.cli train ...`` with ``CPT_JAX_SUPERVISED=1`` (so the child trains
  in process), its stdin and stdout this process's, its stderr passed through line by line;
* forwards SIGTERM / SIGHUP / SIGINT to the child (which saves and stops as usual); the child
  has its own process group (a terminal's Ctrl-C reaches it once, through here) and is killed
  when this process is;
* holds back jax's abort report and any traceback of a failed collective once they show that a
  peer is gone, keeps them in a file, and prints one line naming the dead or missing process;
  the exit code is then 75. A child still alive ``mesh.shutdown_timeout_s`` after such a report
  is killed, so the time to exit stays bounded by the heartbeat and shutdown timeouts.

Everything else (the child's own exit code, a UserError line, a clean stop) passes unchanged.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

SUPERVISED_ENV = "CPT_JAX_SUPERVISED"
TEMPFAIL = 75
_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

# the marks of a peer that is gone, in jax's coordination service, gloo and grpc messages
_PEER_GONE = re.compile(
    r"heartbeat|coordination service|CoordinationService|distributed service detected fatal"
    r"|Gloo \w+ failed|Connection closed by peer|Connection reset by peer|RegisterTask|PollForError",
    re.IGNORECASE,
)
_TRACEBACK = "Traceback (most recent call last):"


def mesh_to_watch(mesh: Any) -> Any:
    """The ``mesh`` section when a ``cpt-jax train`` with it runs supervised (it will join
    several processes: ``mesh.distributed`` on, or auto with a cluster detected; and it is not
    itself the supervised child); None otherwise."""
    if os.environ.get(SUPERVISED_ENV):
        return None
    from cpt_jax.sharding import detect_cluster

    joins = mesh.distributed == "on" or (mesh.distributed == "auto" and detect_cluster() is not None)
    return mesh if joins else None


def supervise(argv: list[str], shutdown_timeout_s: float = 300.0) -> int:
    """Run ``cpt-jax ARGV`` as the watched child; its exit code, or 75 when a peer is gone."""
    child = subprocess.Popen(
        [sys.executable, "-m", "cpt_jax.cli", *argv],
        env=dict(os.environ, **{SUPERVISED_ENV: "1"}),
        stderr=subprocess.PIPE,
        process_group=0,
        preexec_fn=_die_with_parent,
    )
    previous = {sig: signal.signal(sig, lambda s, _f: _forward(child, s)) for sig in _FORWARDED}
    watch = _StderrWatch(child, shutdown_timeout_s)
    try:
        watch.pump()
        code = child.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if child.poll() is None:
            child.kill()
    if watch.peer_gone(code):
        print(f"cpt-jax train: error: {peer_line(watch.report, code)}", file=sys.stderr, flush=True)
        return TEMPFAIL
    watch.flush()
    return 128 - code if code < 0 else code


def peer_line(report: str, code: int, env: dict[str, str] | None = None) -> str:
    """One line naming the dead or missing process from jax's report ``report``."""
    env = os.environ if env is None else env
    me = _env_int(env, "JAX_PROCESS_ID", "SLURM_PROCID", "TPU_WORKER_ID")
    count = _env_int(env, "JAX_NUM_PROCESSES", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    here = f"process {me}" if me is not None else "this process"
    named = _named_processes(report)
    if "RegisterTask" in report or "initialization" in report.lower() and "timed out" in report.lower():
        if me == 0:
            missing = _others(count, me) if not named else named
            what = f"{missing} never joined the run (mesh.init_timeout_s passed)"
        else:
            what = "process 0 (the coordinator) never answered (mesh.init_timeout_s passed)"
    elif named:
        what = f"{named} died or stopped answering (jax's heartbeat timed out)"
    elif me not in (None, 0):
        what = "process 0 (the coordinator) died or stopped answering"
    else:
        what = f"{_others(count, me)} died or stopped answering"
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    return (f"{what}; {here} stopped ({how}; exit 75, a temporary failure: restart the run); "
            f"jax's report: {_keep(report)}")


def _named_processes(report: str) -> str:
    ids: set[int] = set()
    for m in re.finditer(r"Task (\d+) heartbeat timeout|/task:(\d+)", report):
        ids.add(int(m.group(1) or m.group(2)))
    m = re.search(r"stopped sending heartbeats\):\s*([\d,\s]+)", report)
    if m:
        ids |= {int(t) for t in re.findall(r"\d+", m.group(1))}
    return _processes(sorted(ids)) if ids else ""


def _others(count: int | None, me: int | None) -> str:
    if count is None or me is None:
        return "another process"
    return _processes([i for i in range(count) if i != me])


def _processes(ids: list[int]) -> str:
    return f"process {ids[0]}" if len(ids) == 1 else "processes " + ", ".join(map(str, ids))


def _env_int(env: dict[str, str], *names: str) -> int | None:
    for name in names:
        if env.get(name, "").isdigit():
            return int(env[name])
    return None


def _keep(report: str) -> str:
    """Write jax's report to a file; its path."""
    fd, path = tempfile.mkstemp(prefix="cpt-jax-peer-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(report)
    return path


def _forward(child: subprocess.Popen, sig: int) -> None:
    if child.poll() is None:
        child.send_signal(sig)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the supervisor dies (Linux), as a process group kill would."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _StderrWatch:
    """Passes the child's stderr through, holding back a traceback until its last line shows
    whether a peer is gone, and everything after the first sign that one is: an error of jax's
    C++ log, or (for up to ``SOFT_HOLD_S``) a warning that usually comes before one."""

    SOFT_HOLD_S = 60.0

    def __init__(self, child: subprocess.Popen, shutdown_timeout_s: float) -> None:
        self.child, self.grace = child, shutdown_timeout_s
        self.held: list[str] = []
        self.report = ""  # non-empty once a peer is known gone
        self._in_traceback = False
        self._soft_since: float | None = None  # a warning about the peers is being held
        self._warned = False  # the child ended while such a warning was held (no error yet)
        self._timer: threading.Timer | None = None

    def pump(self) -> None:
        assert self.child.stderr is not None
        for raw in iter(self.child.stderr.readline, b""):
            self._line(raw.decode(errors="replace"))
        if self._timer is not None:
            self._timer.cancel()
        self._warned = self._soft_since is not None
        if self.report or self._warned:
            self.report = "".join(self.held)

    def peer_gone(self, code: int) -> bool:
        """Whether the child, ended with ``code``, stopped because a peer is gone: an error
        said so, or it aborted (SIGABRT) after a warning that did."""
        if code == 0 or not self.report:
            return False
        return not self._warned or code in (-signal.SIGABRT, 128 + signal.SIGABRT)

    def _line(self, line: str) -> None:
        if self.report:
            self.held.append(line)
            return
        log_level = line[:1] if re.match(r"[EFW]\d{4} ", line) else ""
        if log_level in ("E", "F") and _PEER_GONE.search(line):
            self.held.append(line)
            self._gone()
            return
        if self._soft_since is not None:
            if time.monotonic() - self._soft_since < self.SOFT_HOLD_S:
                self.held.append(line)
                return
            self._soft_since = None
            self.flush()
        if log_level == "W" and _PEER_GONE.search(line):
            self.flush()
            self.held.append(line)
            self._soft_since = time.monotonic()
            return
        if line.startswith(_TRACEBACK):
            self.flush()
            self._in_traceback = True
        if self._in_traceback:
            self.held.append(line)
            if line[:1].strip() and not line.startswith(_TRACEBACK):  # the exception's own line
                self._in_traceback = False
                if _PEER_GONE.search(line):
                    self._gone()
                else:
                    self.flush()
            return
        sys.stderr.write(line)
        sys.stderr.flush()

    def _gone(self) -> None:
        self.report, self._soft_since = "gone", None
        self._timer = threading.Timer(self.grace, self.child.kill)
        self._timer.daemon = True
        self._timer.start()

    def flush(self) -> None:
        sys.stderr.write("".join(self.held))
        sys.stderr.flush()
        self.held = []
