"""Stop signals of the training loop (one process; the multi-host agreement is in
test_multiprocess.py): SIGTERM / SIGHUP / SIGINT are recorded, a second signal exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cpt_jax.train.signals import StopFlag


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_first_signal_is_recorded_and_handlers_restored(name):
    sig = getattr(signal, name)
    before = signal.getsignal(sig)
    stop = StopFlag()
    stop.install()
    try:
        assert stop.should_stop(False) is None
        os.kill(os.getpid(), sig)
        assert stop.should_stop(False) == name
    finally:
        stop.restore()
    assert signal.getsignal(sig) == before


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_second_signal_exits_at_once(name):
    code = textwrap.dedent(f"""
        import os, signal, time
        from cpt_jax.train.signals import StopFlag
        stop = StopFlag()
        stop.install()
        os.kill(os.getpid(), signal.{name})
        assert stop.should_stop(False) == "{name}"
        print("first", flush=True)
        time.sleep(1.5)  # past the window in which it would be the same event delivered twice
        os.kill(os.getpid(), signal.{name})
        time.sleep(30)
        print("still running", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.stdout.splitlines() == ["first"]
    assert proc.returncode == -getattr(signal, name), proc.stderr
    assert f"{name} again: exiting without a checkpoint" in proc.stderr


def test_the_same_signal_delivered_twice_at_once_is_one_event():
    """SLURM signals every process of a step and the supervisor passes the signal on: the
    trainer gets it twice within milliseconds and still saves instead of dying."""
    stop = StopFlag()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # would end this test process if taken as a second signal
        assert stop.should_stop(False) == "SIGTERM"
    finally:
        stop.restore()
