"""One writer per run directory: a lease file with the holder's host, pid and heartbeat.

``RUN/lease.json`` is created only if absent (``O_EXCL`` locally, ``ifGenerationMatch=0`` on
Cloud Storage), renewed by a heartbeat thread, and deleted when the run ends. A second run on the
same directory stops with one line naming the holder. A lease is taken over, with a printed line,
when its heartbeat is older than ``stale_after_s``, its holder is a dead process on this host
(a killed run), or its holder belongs to the same job (``job_identity``: a SLURM job requeued
onto other nodes, a TPU VM recreated under a new hostname) -- that job restarted, so its old
holder is gone; a different job still waits for the heartbeat to go stale. Every write after
the first is conditional on the lease being the one last seen (the object generation on Cloud
Storage, the file's content locally), so two runs that both see a stale lease cannot both take
it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Iterator

from cpt_jax import storage
from cpt_jax.errors import UserError


class LeaseLost(Exception):
    """The lease changed under us (another run took it)."""


class _LocalStore:
    """Compare-and-swap on a local file; the token is its content. Compare and swap happen
    under an ``flock`` of a sidecar file, so no other run's write falls between them."""

    def __init__(self, file: Any) -> None:
        self.file = os.fspath(file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(f"{self.file}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def create(self, data: bytes) -> Any:
        try:
            fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return data

    def read(self) -> tuple[bytes, Any] | None:
        try:
            with open(self.file, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, data

    def replace(self, data: bytes, token: Any) -> Any:
        with self._locked():
            now = self.read()
            if now is None or now[1] != token:
                return None
            tmp = f"{self.file}.{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.file)
        return data

    def delete(self, token: Any) -> None:
        with self._locked():
            now = self.read()
            if now is not None and now[1] == token:
                os.remove(self.file)


_BOUNDARY = "cpt-jax-lease"


class _GcsStore:
    """Compare-and-swap on a Cloud Storage object; the token is its generation."""

    def __init__(self, file: Any) -> None:
        import gcsfs

        self.fs = gcsfs.GCSFileSystem()
        self.bucket, self.key = os.fspath(file)[len("gs://"):].split("/", 1)

    def _upload(self, data: bytes, generation: Any) -> Any:
        """A multipart upload with ``ifGenerationMatch`` (0: only if absent); None on 412."""
        url = f"{self.fs._location}/upload/storage/v1/b/{self.bucket}/o"
        head = (f"--{_BOUNDARY}\nContent-Type: application/json; charset=UTF-8\n\n"
                + json.dumps({"name": self.key})
                + f"\n--{_BOUNDARY}\nContent-Type: application/json\n\n")
        body = head.encode() + data + f"\n--{_BOUNDARY}--".encode()
        try:
            out = self.fs.call("POST", url, uploadType="multipart", data=body, json_out=True,
                               headers={"Content-Type": f'multipart/related; boundary="{_BOUNDARY}"'},
                               ifGenerationMatch=str(generation))
        except FileExistsError:  # 412: precondition failed
            return None
        return out["generation"]

    def create(self, data: bytes) -> Any:
        return self._upload(data, 0)

    def read(self) -> tuple[bytes, Any] | None:
        try:
            meta = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, json_out=True)
            _, data = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, alt="media",
                                   generation=meta["generation"])
        except FileNotFoundError:
            return None
        return data, meta["generation"]

    def replace(self, data: bytes, token: Any) -> Any:
        return self._upload(data, token)

    def delete(self, token: Any) -> None:
        # the generation precondition alone decides on real Cloud Storage; the read first keeps
        # a lease that is no longer ours on emulators that ignore preconditions on DELETE
        now = self.read()
        if now is None or now[1] != token:
            return
        try:
            self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self.key, ifGenerationMatch=str(token))
        except (FileNotFoundError, FileExistsError):
            pass


def job_identity() -> str:
    """Which job this process belongs to: ``CPT_JAX_JOB_ID`` (set by a launcher), else
    ``slurm:<SLURM_JOB_ID>``, else ``tpu:<TPU_NAME>``; empty when none is known."""
    if os.environ.get("CPT_JAX_JOB_ID"):
        return os.environ["CPT_JAX_JOB_ID"]
    for var, kind in (("SLURM_JOB_ID", "slurm"), ("TPU_NAME", "tpu")):
        if os.environ.get(var):
            return f"{kind}:{os.environ[var]}"
    return ""


def _alive_here(holder: dict) -> bool:
    """False when ``holder`` is a process of this host that no longer exists."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


class Lease:
    """The run directory's lease; ``acquire()``, then ``release()`` (heartbeat in between)."""

    def __init__(self, file: Any, stale_after_s: float = 300.0, log: Any = None) -> None:
        self.file = storage.path(file)
        self.stale_after_s = float(stale_after_s)
        self._store = _GcsStore(self.file) if storage.is_remote(self.file) else _LocalStore(self.file)
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._me = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex,
                    "start": time.time(), "job": job_identity()}
        self._token: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _record(self) -> bytes:
        return json.dumps({**self._me, "heartbeat": time.time()}).encode()

    def acquire(self) -> None:
        """Take the lease, or raise a one-line UserError naming the live holder."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self._token = self._store.create(self._record())
            if self._token is not None:
                return self._start_heartbeat()
            seen = self._store.read()
            if seen is None:
                continue  # released between our create and read
            try:
                holder = json.loads(seen[0])
            except ValueError:
                holder = {}
            if not isinstance(holder, dict):
                holder = {}
            try:
                age = time.time() - float(holder.get("heartbeat", 0))
            except (TypeError, ValueError):
                age = float("inf")  # a damaged lease record holds nothing
            same_job = bool(self._me["job"]) and holder.get("job") == self._me["job"]
            if age < self.stale_after_s and _alive_here(holder) and not same_job:
                raise UserError(
                    f"{self.file.parent} is in use by pid {holder.get('pid')} on "
                    f"{holder.get('host')} (started {_when(holder.get('start'))}, heartbeat "
                    f"{age:.0f}s ago); stop that run or use another run_dir")
            self._token = self._store.replace(self._record(), seen[1])
            if self._token is not None:
                why = ("is no longer running" if not _alive_here(holder) else
                       f"belongs to this job ({self._me['job']}), which restarted" if same_job else
                       f"went silent {age:.0f}s ago")
                self._log(f"taking over the lease of {self.file.parent}: pid {holder.get('pid')} on "
                          f"{holder.get('host')} {why}")
                return self._start_heartbeat()
        raise UserError(f"{self.file}: another run keeps taking the lease of this run_dir")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="cpt-jax-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        period = max(self.stale_after_s / 5.0, 0.05)
        while not self._stop.wait(period):
            try:
                token = self._store.replace(self._record(), self._token)
            except OSError:
                continue  # a transient storage error: try again next period
            if token is None:
                self.lost = True
                self._log(f"lost the lease of {self.file.parent} to another run")
                return
            self._token = token

    def release(self) -> None:
        """Stop the heartbeat and delete the lease (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._token is not None and not self.lost:
            self._store.delete(self._token)
        self._token = None


def _when(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (TypeError, ValueError):
        return "?"
