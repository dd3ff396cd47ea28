"""The supervisor of a multi-process `cpt-jax train`: a child whose stderr looks like jax's
report of a dead peer ends as one line naming it with exit 75; anything else passes unchanged.
(Two real processes on 127.0.0.1, one killed or never started: tests/test_multiprocess.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from cpt_jax.train import supervisor

HEARTBEAT = ("E1207 00:01:40.457 12095 coordination_service.cc:1549] Use error polling to propagate "
             "the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy "
             "(stopped sending heartbeats):\n2\nThe tasks have crashed.\n"
             "F1207 00:01:40.458 12046 client.h:80] Terminating process because the JAX distributed "
             "service detected fatal errors.\n*** Check failure stack trace: ***\n    @ 0x7f SendToLog()\n")
GLOO = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
        "ValueError: UNKNOWN: Gloo AllGather failed: pair.cc:547] Connection closed by peer [127.0.0.1]:1759\n")
WARNING = ("W1207 00:04:59.9 16660 preemption_sync_manager.cc:147] Failed to retrieve preemption notice "
           "from coordination service: UNAVAILABLE: Socket closed\n")
USER = "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'step'\n"


def _child_script(stderr: str, code: int) -> str:
    """A stand-in for the trainer: prints a line on stdout, ``stderr`` on stderr, exits ``code``
    (a negative code: killed by that signal)."""
    end = f"os.kill(os.getpid(), {-code})" if code < 0 else f"sys.exit({code})"
    return textwrap.dedent(f"""
        import os, sys
        print("step 1 | loss 3.0", flush=True)
        sys.stderr.write("warming up\\n"); sys.stderr.flush()
        sys.stderr.write({stderr!r}); sys.stderr.flush()
        {end}
    """)


def _supervise(tmp_path, monkeypatch, capfd, stderr: str, code: int, env: dict[str, str]) -> tuple[int, str]:
    script = tmp_path / "child.py"
    script.write_text(_child_script(stderr, code))
    real = subprocess.Popen

    def popen(cmd, **kw):  # the child runs the stand-in instead of `python -m cpt_jax.cli`
        assert cmd[1:3] == ["-m", "cpt_jax.cli"] and kw["env"][supervisor.SUPERVISED_ENV] == "1"
        return real([sys.executable, str(script)], **kw)

    monkeypatch.setattr(subprocess, "Popen", popen)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    got = supervisor.supervise(["train", "--config", "x.py"], shutdown_timeout_s=30)
    out, err = capfd.readouterr()
    assert "step 1 | loss 3.0" in out
    return got, err


@pytest.mark.parametrize("stderr,code,me,named", [
    (HEARTBEAT, -6, "0", "process 2 died or stopped answering"),
    (WARNING + "more\n", -6, "1", "process 0 (the coordinator) died"),  # a warning, then an abort
    (GLOO, 1, "1", "process 0 (the coordinator) died"),
    (GLOO, 1, "0", "processes 1, 2 died"),
    ("F1207 00:02:02.9 12901 client.h:80] Terminating process because the JAX distributed service detected "
     "fatal errors. absl::Status: DEADLINE_EXCEEDED\n\nRPC: /xla.coordination.CoordinationService/RegisterTask\n",
     -6, "0", "processes 1, 2 never joined"),
])
def test_a_gone_peer_is_one_line_and_75(tmp_path, monkeypatch, capfd, stderr, code, me, named):
    env = {"JAX_PROCESS_ID": me, "JAX_NUM_PROCESSES": "3"}
    got, err = _supervise(tmp_path, monkeypatch, capfd, stderr, code, env)
    lines = err.splitlines()
    assert got == 75 and lines[0] == "warming up" and len(lines) == 2, err
    assert lines[1].startswith("cpt-jax train: error: ") and named in lines[1] and "exit 75" in lines[1]
    report = lines[1].rsplit("jax's report: ", 1)[1]
    assert open(report).read() == stderr  # nothing of jax's report is lost


@pytest.mark.parametrize("stderr,code,expected", [
    (USER, 1, 1),  # a traceback of another kind passes through whole, with its code
    ("cpt-jax train: error: mesh.tensor=3 does not divide 4\n", 2, 2),
    (HEARTBEAT, 0, 0),  # jax complained, but the trainer finished: its output, its code
    ("", -15, 143),  # killed by a signal: the shell's 128 + N
    (WARNING + "cpt-jax train: error: data.dir /x does not exist\n", 2, 2),  # a warning, then bad input
])
def test_other_endings_pass_unchanged(tmp_path, monkeypatch, capfd, stderr, code, expected):
    got, err = _supervise(tmp_path, monkeypatch, capfd, stderr, code, {"JAX_PROCESS_ID": "0"})
    assert got == expected and err == "warming up\n" + stderr


def test_only_multi_process_training_is_supervised(monkeypatch, tmp_path):
    from cpt_jax import configure
    from pathlib import Path

    tiny = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.py")
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", supervisor.SUPERVISED_ENV):
        monkeypatch.delenv(var, raising=False)

    def args(*extra: str):
        return configure.load(tiny, list(extra)).mesh

    assert supervisor.mesh_to_watch(args()) is None
    assert supervisor.mesh_to_watch(args("--config.mesh.distributed=on")).shutdown_timeout_s == 300
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    assert supervisor.mesh_to_watch(args()) is not None
    assert supervisor.mesh_to_watch(args("--config.mesh.distributed=off")) is None
    monkeypatch.setenv(supervisor.SUPERVISED_ENV, "1")  # the child itself trains
    assert supervisor.mesh_to_watch(args()) is None
