"""Several JAX processes on this machine (CPU devices, 127.0.0.1, free ports), as on several hosts:

* 2 processes x 2 devices give the losses of 1 process x 4 devices, for ``mesh.fsdp=4`` (started
  the way SLURM's srun starts launch/slurm_task.sh) and for ``mesh.fsdp=1 mesh.tensor=4`` (by
  launch/local_multiprocess.sh: every process loads every row);
* SIGTERM in one process stops both at the same step (jax's preemption sync) with a
  checkpoint, and 2 new processes resume it to the uninterrupted run's losses;
* SIGKILL of one process (a worker or the coordinator) ends the other within a bounded time
  with one line naming the dead process and exit 75, and so does a peer that never arrives;
* a host whose checkpoint listing differs from process 0's restores process 0's step;
* SIGTERM delivered to every process of a supervised run (trainers and supervisors) saves once;
* a failing run makes launch/local_multiprocess.sh exit non-zero.

Run as a script (``python tests/test_multiprocess.py SPEC``) this file is the training process
of the SIGTERM case.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cpt_jax.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
COMMON = [f"train.steps={STEPS}", "train.batch_size=8", "train.log_every=1", "train.progress=false",
          "logging.tensorboard=false", "mesh.heartbeat_timeout_s=4", "mesh.shutdown_timeout_s=10"]
FSDP4 = ["mesh.fsdp=4"]
TENSOR4 = ["mesh.fsdp=1", "mesh.tensor=4"]
_ENV_PREFIXES = ("JAX_", "SLURM_", "TPU_", "XLA_", "COORDINATOR_ADDRESS", "MEGASCALE_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", PYTHONUNBUFFERED="1", **extra)
    return env


def coordinator_env(port: int, rank: int, n: int = 2) -> dict[str, str]:
    return base_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n),
                    JAX_PROCESS_ID=str(rank), JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")


def cpt_jax() -> str:
    exe = Path(sys.executable).parent / "cpt-jax"
    return str(exe) if exe.exists() else "cpt-jax"


def cli_args(run_dir: Path, overrides: list[str]) -> list[str]:
    return ["--config", str(ROOT / "configs" / "tiny.py"), f"--config.run_dir={run_dir}",
            *[f"--config.{o}" for o in COMMON + overrides]]


def run_all(cmds: list[list[str]], envs: list[dict], logs: list[Path], timeout: float) -> list[int]:
    """Start every command at once; their exit codes (all are killed in the end, whatever happens)."""
    procs = []
    try:
        for cmd, env, log in zip(cmds, envs, logs):
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "w"),
                                          stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        return [p.wait(max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def step_losses(run_dir: Path) -> dict[int, float]:
    """``{step: train/loss}`` from metrics.jsonl (one record per step, as readers see it)."""
    return {r["step"]: r["train/loss"] for r in RunDir(run_dir).read_metrics() if "train/loss" in r}


def same_losses(got: dict[int, float], ref: dict[int, float], steps=range(1, STEPS + 1)) -> None:
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in steps], [ref[s] for s in steps], rtol=1e-5)


def last_result(log: Path) -> dict:
    lines = [l for l in log.read_text().splitlines() if l.startswith("RESULT ")]
    assert lines, log.read_text()[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """1 process x 4 devices: the fsdp=4 and the fsdp=1 x tensor=4 runs."""
    tmp = tmp_path_factory.mktemp("one_process")
    jobs = [{"mode": "train", "run_dir": str(tmp / name), "overrides": COMMON + mesh}
            for name, mesh in (("fsdp4", FSDP4), ("tensor4", TENSOR4))]
    log = tmp / "worker.log"
    (code,) = run_all([[sys.executable, str(ROOT / "tests" / "train_worker.py"), json.dumps(jobs)]],
                      [base_env(4)], [log], timeout=240)
    assert code == 0, log.read_text()[-3000:]
    return {"fsdp4": tmp / "fsdp4", "tensor4": tmp / "tensor4"}


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory) -> Path:
    """2 'nodes' x 2 devices through launch/slurm_task.sh, with the variables srun sets."""
    tmp = tmp_path_factory.mktemp("slurm")
    port = free_port()
    envs = [base_env(2, SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_STEP_NODELIST="127.0.0.1",
                     SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_PROCID=str(r), SLURM_LOCALID="0",
                     SLURM_NODEID=str(r), CUDA_VISIBLE_DEVICES="0,1", JAX_COORDINATOR_PORT=str(port),
                     JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}", CPT_JAX=cpt_jax())
            for r in range(2)]
    cmd = ["bash", str(ROOT / "launch" / "slurm_task.sh"), *cli_args(tmp / "run", FSDP4)]
    logs = [tmp / f"task{r}.log" for r in range(2)]
    codes = run_all([cmd, cmd], envs, logs, timeout=240)
    assert codes == [0, 0], "\n".join(l.read_text()[-2000:] for l in logs)
    for log in logs:
        assert "local devices 0,1" in log.read_text()
    assert '"devices": 4,' in logs[0].read_text()  # the summary: one mesh over both tasks
    return tmp / "run"


def test_slurm_tasks_match_one_process(reference, slurm_run):
    same_losses(step_losses(slurm_run), step_losses(reference["fsdp4"]))


def test_tensor_axis_across_processes_matches_one_process(reference, tmp_path):
    """mesh.fsdp=1 x tensor=4 on 2 processes: each process loads all 8 rows."""
    port = free_port()
    env = base_env(1, PORT=str(port), RUN_LOG_DIR=str(tmp_path / "logs"), CPT_JAX=cpt_jax(),
                   JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    cmd = ["bash", str(ROOT / "launch" / "local_multiprocess.sh"), "2", "2",
           *cli_args(tmp_path / "run", TENSOR4)]
    (code,) = run_all([cmd], [env], [tmp_path / "launcher.log"], timeout=240)
    assert code == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    same_losses(step_losses(tmp_path / "run"), step_losses(reference["tensor4"]))


def test_sigterm_in_one_process_stops_both_and_resume_matches(slurm_run, tmp_path):
    """No log / eval / checkpoint step before the end while interrupted: only jax's preemption
    sync can stop both processes early, at one step. The resumed steps match the reference."""
    run_dir = tmp_path / "run"
    interrupted = {"run_dir": str(run_dir), "overrides": COMMON + FSDP4 + ["train.log_every=1000"],
                   "stop_at": 3, "process": 1, "slow": 0.4}
    resumed = {"run_dir": str(run_dir), "overrides": COMMON + FSDP4, "stop_at": -1, "process": 1, "slow": 0}
    results = {}
    for phase, spec in (("interrupted", interrupted), ("resumed", resumed)):
        port = free_port()
        cmd = [sys.executable, __file__, json.dumps(spec)]
        logs = [tmp_path / f"{phase}{r}.log" for r in range(2)]
        codes = run_all([cmd, cmd], [coordinator_env(port, r) for r in range(2)], logs, timeout=240)
        assert codes == [0, 0], "\n".join(l.read_text()[-2000:] for l in logs)
        results[phase] = [last_result(log) for log in logs]
    assert [r["interrupted"] for r in results["interrupted"]] == ["SIGTERM", "SIGTERM"]
    (saved,) = {r["last_checkpoint"] for r in results["interrupted"]}  # the same step on both
    assert 3 < saved < STEPS
    assert [(r["resumed_from"], r["steps"]) for r in results["resumed"]] == [(saved, STEPS)] * 2
    got, ref = step_losses(run_dir), step_losses(slurm_run)
    steps = range(saved + 1, STEPS + 1)
    np.testing.assert_allclose([got[s] for s in steps], [ref[s] for s in steps], rtol=1e-5)


def _error_lines(log: Path) -> list[str]:
    """The lines of a process's output that report an error (jax's C++ log and tracebacks included)."""
    marks = ("error", "Traceback", "Check failure", "Fatal Python")
    return [line for line in log.read_text().splitlines()
            if any(m in line for m in marks) or line[:1] in ("E", "F") and line[1:5].isdigit()]


@pytest.mark.parametrize("victim", [1, 0])
def test_sigkill_of_one_process_ends_the_other_with_one_line_and_75(tmp_path, victim):
    """The survivor ends within the heartbeat and shutdown timeouts, with one line naming the
    dead process and exit 75, whether the dead one is a worker or the coordinator."""
    port = free_port()
    cmd = [cpt_jax(), "train", *cli_args(tmp_path / "run", FSDP4 + ["train.steps=100000"])]
    procs = []
    try:
        for r in range(2):
            procs.append(subprocess.Popen(cmd, env=coordinator_env(port, r), cwd=ROOT,
                                          stdout=open(tmp_path / f"p{r}.log", "w"), stderr=subprocess.STDOUT))
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.2)
        procs[victim].send_signal(signal.SIGKILL)  # the trainer under it dies with it
        t0 = time.monotonic()
        survivor = 1 - victim
        code = procs[survivor].wait(60)  # heartbeat 4 s, shutdown 10 s
        took = time.monotonic() - t0
        lines = _error_lines(tmp_path / f"p{survivor}.log")
        assert code == 75 and took < 40, (code, took, lines)
        assert len(lines) == 1 and f"process {victim}" in lines[0] and "died" in lines[0], lines
        assert lines[0].startswith("cpt-jax train: error:") and "exit 75" not in lines[0][:20]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_peer_that_never_arrives_is_one_line_and_75(tmp_path):
    """Process 0 alone of 2: after ``mesh.init_timeout_s`` it ends with one line naming process 1."""
    log = tmp_path / "p0.log"
    cmd = [cpt_jax(), "train", *cli_args(tmp_path / "run", FSDP4 + ["mesh.init_timeout_s=5"])]
    t0 = time.monotonic()
    (code,) = run_all([cmd], [coordinator_env(free_port(), 0)], [log], timeout=90)
    lines = _error_lines(log)
    assert code == 75 and time.monotonic() - t0 < 60, (code, log.read_text()[-3000:])
    assert len(lines) == 1 and "process 1 never joined" in lines[0], lines
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_failing_run_makes_the_local_launcher_fail(tmp_path):
    env = base_env(1, PORT=str(free_port()), RUN_LOG_DIR=str(tmp_path / "logs"), CPT_JAX=cpt_jax())
    cmd = ["bash", str(ROOT / "launch" / "local_multiprocess.sh"), "2", "1",
           *cli_args(tmp_path / "run", ["mesh.tensor=3"])]
    (code,) = run_all([cmd], [env], [tmp_path / "launcher.log"], timeout=120)
    assert code != 0
    assert "process 0 failed" in (tmp_path / "launcher.log").read_text()


def test_run_dir_not_shared_between_processes_is_one_line(tmp_path):
    """Each process sees a different folder (as host-local disks would): both stop at start."""
    port = free_port()
    cmds = [[cpt_jax(), "train", *cli_args(tmp_path / f"host{rank}" / "run", FSDP4)] for rank in (0, 1)]
    envs = [coordinator_env(port, rank) for rank in (0, 1)]
    logs = [tmp_path / f"p{rank}.log" for rank in (0, 1)]
    codes = run_all(cmds, envs, logs, timeout=180)
    assert codes == [2, 2], [log.read_text()[-2000:] for log in logs]
    for log in logs:
        lines = [x for x in log.read_text().splitlines() if "is not shared between hosts" in x]
        assert len(lines) == 1 and "process(es) [1]" in lines[0] and "Traceback" not in log.read_text()
    assert not (tmp_path / "host0" / "run" / "checkpoints").exists()


class _SignalAt:
    """The configured data; process ``process`` gets SIGTERM while batch ``at`` is read, and
    later batches take ``slow`` s more (time for the processes to agree where to stop)."""

    def __init__(self, data, at: int, process: int, slow: float):
        self.data, self.domains, self.at, self.process, self.slow = data, data.domains, at, process, slow

    def batch(self, step: int):
        import jax

        if step == self.at and jax.process_index() == self.process:
            os.kill(os.getpid(), signal.SIGTERM)
        if 0 <= self.at <= step:
            time.sleep(self.slow)
        return self.data.batch(step)


def _main(spec: dict) -> None:
    """One training process of the SIGTERM case (and of the one whose hosts list different
    checkpoints: ``blind``); prints ``RESULT {summary}``."""
    import jax

    sys.path.insert(0, str(ROOT / "tests"))
    from train_worker import load_cfg

    from cpt_jax import sharding
    from cpt_jax.data.pipeline import TrainData
    from cpt_jax.train import loop

    cfg = load_cfg(spec["run_dir"], spec["overrides"])
    sharding.maybe_initialize_distributed(cfg.mesh)  # before TrainData asks for the process count
    if jax.process_index() in spec.get("blind", []):  # this host's listing shows no checkpoint
        from cpt_jax import run_dir

        run_dir.RunDir.complete_steps = lambda self: []
        run_dir.RunDir.latest_step = lambda self: None
    data = _SignalAt(TrainData.from_config(cfg, jax.process_index(), jax.process_count()),
                     spec["stop_at"], spec["process"], spec["slow"])
    summary = loop.run(cfg, data=data, eval_sets={})
    print("RESULT " + json.dumps(summary, default=float), flush=True)


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))


def test_an_altered_newest_step_makes_every_process_fall_back_together(slurm_run, tmp_path):
    """Process 0 lists the steps and decides the one to restore: when the newest fails its
    integrity check, both processes resume from the step before, retraining it to the same
    losses as the uninterrupted run."""
    from test_integrity import alter_one_value

    run_dir = tmp_path / "run"
    cmd = [cpt_jax(), "train", *cli_args(run_dir, FSDP4 + ["checkpoint.every=6", "checkpoint.keep=0"])]
    for phase in ("first", "resumed"):
        port = free_port()
        logs = [tmp_path / f"{phase}{r}.log" for r in range(2)]
        codes = run_all([cmd, cmd], [coordinator_env(port, r) for r in range(2)], logs, timeout=240)
        assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
        if phase == "first":
            assert RunDir(run_dir).complete_steps() == [6, 12]
            alter_one_value(run_dir / "checkpoints" / "12" / "params")
            (run_dir / "summary.json").unlink()
    said = logs[0].read_text()
    assert "checkpoint step 12 cannot be restored" in said and "resuming from step 6" in said
    assert "fails its integrity check" in said
    assert (run_dir / "checkpoints" / "12.unreadable" / "params").is_dir()
    got, ref = step_losses(run_dir), step_losses(slurm_run)
    np.testing.assert_allclose([got[s] for s in range(7, STEPS + 1)], [ref[s] for s in range(7, STEPS + 1)],
                               rtol=1e-5)


def test_hosts_listing_different_checkpoints_all_restore_process_0s_step(slurm_run, tmp_path):
    """Process 1's listing shows no checkpoint at all (as a stale listing of a bucket or a lagging
    shared disk can): it still restores the step process 0 listed and chose, and the resumed
    steps match the uninterrupted run."""
    run_dir = tmp_path / "run"
    first = [cpt_jax(), "train", *cli_args(run_dir, FSDP4 + ["checkpoint.every=6", "checkpoint.keep=0"])]
    logs = [tmp_path / f"first{r}.log" for r in range(2)]
    port = free_port()
    codes = run_all([first, first], [coordinator_env(port, r) for r in range(2)], logs, timeout=240)
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / "12")  # the run stopped after saving step 6
    (run_dir / "summary.json").unlink()
    spec = {"run_dir": str(run_dir), "overrides": COMMON + FSDP4 + ["checkpoint.every=6", "checkpoint.keep=0"],
            "stop_at": -1, "process": 1, "slow": 0, "blind": [1]}
    cmd = [sys.executable, __file__, json.dumps(spec)]
    logs = [tmp_path / f"resumed{r}.log" for r in range(2)]
    port = free_port()
    codes = run_all([cmd, cmd], [coordinator_env(port, r) for r in range(2)], logs, timeout=240)
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    assert [last_result(log)["resumed_from"] for log in logs] == [6, 6]
    got, ref = step_losses(run_dir), step_losses(slurm_run)
    np.testing.assert_allclose([got[s] for s in range(7, STEPS + 1)], [ref[s] for s in range(7, STEPS + 1)],
                               rtol=1e-5)


def test_sigterm_to_every_process_of_a_supervised_run_saves_once(tmp_path):
    """As SLURM and a VM shutdown do, SIGTERM reaches every process: each supervisor (which
    passes it on) and each trainer under it. Both processes still save one step and exit 0."""
    run_dir = tmp_path / "run"
    cmd = [cpt_jax(), "train", *cli_args(run_dir, FSDP4 + ["train.steps=100000"])]
    port = free_port()
    procs = [subprocess.Popen(cmd, env=coordinator_env(port, r), cwd=ROOT, stdout=open(tmp_path / f"p{r}.log", "w"),
                              stderr=subprocess.STDOUT) for r in range(2)]
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.2)
        for p in procs:
            trainers = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            assert len(trainers) == 1, trainers
            os.kill(int(trainers[0]), signal.SIGTERM)
            time.sleep(0.3)  # the trainer has handled it when the supervisor passes it on
            os.kill(p.pid, signal.SIGTERM)
        codes = [p.wait(120) for p in procs]
        logs = [(tmp_path / f"p{r}.log").read_text() for r in range(2)]
        assert codes == [0, 0], [log[-2000:] for log in logs]
        assert all("again: exiting without a checkpoint" not in log for log in logs)
        assert json.loads(logs[0][logs[0].index("{"):])["interrupted"] == "SIGTERM"
        assert len(RunDir(run_dir).complete_steps()) == 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
