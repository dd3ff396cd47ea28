"""Storage that stops answering: deadlines, and reads of ``gs://`` tried again with backoff.

A step that does not finish within its deadline (:class:`Deadline`: training's
``storage.timeout_s``; reads outside training :func:`read_timeout_s`) ends the program with one
line and exit code 75 (``EX_TEMPFAIL``): what is saved stays saved, and a restart loop
(``launch/tpu_vm.sh --restart``, SLURM ``--requeue``) tries again later.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any, Callable, Iterator, TypeVar

from cpt_jax.errors import UserError

T = TypeVar("T")
TEMPFAIL = 75  # exit code of a temporary failure (sysexits.h EX_TEMPFAIL): a restart may succeed


class Deadline:
    """``with Deadline(seconds, "saving checkpoint step 8"):`` -- when the block is still
    running after ``seconds`` (storage that stopped answering, a peer that is gone), print one
    line and end the process with exit code 75. Blocked C threads cannot be interrupted, hence
    a hard exit; what earlier steps saved is complete and stays."""

    def __init__(self, seconds: float, what: str) -> None:
        import threading

        self.seconds, self.what = float(seconds), what
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True

    def _expire(self) -> None:
        print(f"cpt-jax: error: no answer within {self.seconds:.0f}s while {self.what} (storage or "
              f"another process stopped responding): stopping with exit code {TEMPFAIL}, a "
              "temporary failure; what was saved is kept and a restart resumes from it",
              file=sys.stderr, flush=True)
        os._exit(TEMPFAIL)

    def __enter__(self) -> "Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()


READ_TIMEOUT_ENV = "CPT_JAX_STORAGE_TIMEOUT_S"
_UNANSWERED = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "Connection refused", "Connection reset",
               "Failed to connect", "Couldn't connect", "Cannot connect", "timed out", "Timeout")


def read_timeout_s() -> float:
    """How long reading a ``gs://`` checkpoint outside training may take in all: the
    ``CPT_JAX_STORAGE_TIMEOUT_S`` environment variable, else training's ``storage.timeout_s``
    default (300 s)."""
    text = os.environ.get(READ_TIMEOUT_ENV, "300")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{READ_TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return seconds


def unanswered(err: BaseException) -> bool:
    """Whether ``err`` (or anything in its cause chain) says storage did not answer, as
    opposed to a missing or damaged object."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ConnectionError, TimeoutError)) or any(m in str(err) for m in _UNANSWERED):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def reading(source: Any, what: str) -> Iterator[None]:
    """Around reading ``what`` from a ``gs://`` ``source`` (nothing for a local one): a
    :class:`Deadline` of :func:`read_timeout_s` (one line, exit 75)."""
    if not _remote(source):
        yield
        return
    with Deadline(read_timeout_s(), f"reading {what} from {source}"):
        yield


def read_remote(source: Any, what: str, read: Callable[[], T]) -> T:
    """``read()``; from a ``gs://`` ``source`` it is tried again with backoff (1, 2, 4 ... 30 s)
    while storage does not answer (:func:`unanswered`), within :func:`read_timeout_s` in all:
    past that a ``ConnectionError`` (one line, exit 75). Other errors pass at once."""
    if not _remote(source):
        return read()
    import time

    timeout = read_timeout_s()
    end, delay = time.monotonic() + timeout, 1.0
    with reading(source, what):
        while True:
            try:
                return read()
            except Exception as err:
                if not unanswered(err):
                    raise
                if time.monotonic() + delay > end:
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                    raise ConnectionError(f"{source}: no answer within {timeout:.0f}s while reading "
                                          f"{what} ({first})") from None
            time.sleep(delay)
            delay = min(2 * delay, 30.0)


def _remote(p: Any) -> bool:
    return os.fspath(p).startswith("gs://")
