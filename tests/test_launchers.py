"""The launch/ scripts without accelerators or jax: exit codes, the per-task SLURM environment,
and tpu_vm.sh's gcloud commands (dry run vs a stub ``gcloud`` first on PATH that runs every
worker command on this machine, as a one-worker slice)."""

from __future__ import annotations

import os
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"

STUB_GCLOUD = r"""#!/usr/bin/env bash
# gcloud stand-in: records argv (one shell-quoted line per call); runs `tpu-vm ssh --command`
# in $FAKE_WORKER (the worker's home; an install is skipped), copies `tpu-vm scp` files there,
# reports READY, or the next line of $FAKE_STATES (FAIL: describe fails), accepts create/delete.
printf '%q ' "$@" | sed 's/ $//' >>"$GCLOUD_LOG"; echo >>"$GCLOUD_LOG"
[ "$1 $2 $3" = "compute tpus tpu-vm" ] || exit 64
case "$4" in
  ssh) for a in "$@"; do case "$a" in --command=*) cmd=${a#--command=} ;; esac; done
       case "$cmd" in *"pip install"*) exit 0 ;; esac
       cd "$FAKE_WORKER" && HOME="$FAKE_WORKER" exec bash -c "$cmd" ;;
  scp) cp "$5" "$FAKE_WORKER/${6#*:}" ;;
  describe) state=READY
            if [ -s "${FAKE_STATES:-/none}" ]; then state=$(head -n 1 "$FAKE_STATES"); sed -i 1d "$FAKE_STATES"; fi
            [ "$state" != FAIL ] || exit 1
            echo "$state" ;;
  create|delete) ;;
  *) exit 64 ;;
esac
"""


def script(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(0o755)
    return path


def run(cmd: list[str], env: dict, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_local_launcher_returns_the_failing_rank_code_and_stops_the_others(tmp_path):
    marker = tmp_path / "rank0_terminated"
    fake = script(tmp_path / "cpt", f"""
        #!/usr/bin/env bash
        if [ "$JAX_PROCESS_ID" = 1 ]; then sleep 0.5; exit 3; fi
        trap 'touch {marker}; exit 0' TERM
        sleep 60 & wait
    """)
    out = run(["bash", str(LAUNCH / "local_multiprocess.sh"), "2", "1", "--config", "x.py"],
              {"CPT_JAX": str(fake), "RUN_LOG_DIR": str(tmp_path / "logs")}, timeout=30)
    assert out.returncode == 3, out.stderr
    assert "process 1 failed (exit 3)" in out.stderr
    assert marker.exists()


def test_slurm_task_owns_every_visible_gpu_and_sets_gpu_flags(tmp_path):
    fake = script(tmp_path / "cpt", """
        #!/usr/bin/env bash
        echo "ids=$JAX_LOCAL_DEVICE_IDS"; echo "flags=$XLA_FLAGS"; echo "args=$*"
    """)
    env = {"CPT_JAX": str(fake), "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "XLA_FLAGS": "--mine",
           "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    out = run(["bash", str(LAUNCH / "slurm_task.sh"), "--config", "c.py"], env)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert lines["ids"] == "0,1,2,3,4,5,6,7"
    assert lines["flags"].startswith("--mine ") and "--xla_gpu_enable_latency_hiding_scheduler=true" in lines["flags"]
    assert lines["args"] == "train --config c.py"
    sbatch = (LAUNCH / "slurm_gpu.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in sbatch and "launch/slurm_task.sh" in sbatch


@pytest.fixture
def slice_env(tmp_path):
    """A one-worker 'slice': stub gcloud first on PATH, the worker's home in tmp_path/worker."""
    bin_dir, worker = tmp_path / "bin", tmp_path / "worker"
    bin_dir.mkdir()
    worker.mkdir()
    script(bin_dir / "gcloud", STUB_GCLOUD)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "GCLOUD_LOG": str(tmp_path / "gcloud.log"),
            "FAKE_WORKER": str(worker), "TPU_NAME": "my-v4-32", "ZONE": "us-central2-b",
            "PROJECT": "proj", "STATE_DIR": str(worker / "state"), "GRACE": "5", "POLL": "1"}


def calls(env: dict) -> list[list[str]]:
    log = Path(env["GCLOUD_LOG"])
    return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


def same_but_archive(argv: list[str]) -> list[str]:
    """The scp source is a temporary file: compare its name only."""
    return [Path(a).name if a.endswith("cpt-jax-sync.tgz") else a for a in argv]


def test_tpu_dry_run_prints_the_commands_the_real_run_gives(slice_env, tmp_path):
    trainer = script(tmp_path / "trainer", "#!/usr/bin/env bash\necho trained\n")
    env = {**slice_env, "CPT_JAX": str(trainer)}
    args = ["bash", str(LAUNCH / "tpu_vm.sh"), "start", "--config", "configs/tiny.py", "--config.train.steps=5"]
    dry = run(args, {**env, "DRY_RUN": "1"})
    assert dry.returncode == 0, dry.stderr
    assert calls(env) == []  # nothing ran
    printed = [shlex.split(line) for line in dry.stdout.splitlines()]
    assert [p[:5] for p in printed] == [["gcloud", "compute", "tpus", "tpu-vm", v] for v in ("scp", "ssh", "ssh")]
    real = run(args, env)
    assert real.returncode == 0, real.stderr
    assert [same_but_archive(c) for c in calls(env)] == [same_but_archive(p[1:]) for p in printed]
    scp, unpack, start = printed
    assert scp[6:] == ["my-v4-32:cpt-jax-sync.tgz", "--zone=us-central2-b", "--project=proj", "--worker=all"]
    assert start[-1] == ("--command=cd cpt-jax && CPT_JAX_JOB_ID=tpu:my-v4-32 bash launch/tpu_worker.sh "
                         "start --config configs/tiny.py --config.train.steps=5")


def test_tpu_start_wait_status_logs_stop(slice_env, tmp_path):
    """The worker runs detached; `wait` returns the training's exit code; `stop` sends SIGTERM."""
    outside = tmp_path / "elsewhere" / "my_config.py"
    outside.parent.mkdir()
    outside.write_text("# a config outside the repository\n")
    trainer = script(tmp_path / "trainer", """
        #!/usr/bin/env bash
        echo "args: $*"
        [ -f "${@: -2:1}" ] || echo "config missing"
        [ -z "$FAIL" ] || exit "$FAIL"
        trap 'echo "  \\"interrupted\\": \\"SIGTERM\\""; exit 0' TERM
        sleep 60 & wait
    """)
    env = {**slice_env, "CPT_JAX": str(trainer)}
    tpu = ["bash", str(LAUNCH / "tpu_vm.sh")]
    out = run(tpu + ["start", "--config", str(outside)], {**env, "FAIL": "3"})
    assert out.returncode == 0, out.stderr
    waited = run(tpu + ["wait"], env)
    assert waited.returncode == 3 and "exited 3 -" in waited.stdout
    log = run(tpu + ["logs", "5"], env).stdout
    assert "args: train --config .launch/my_config.py --config.mesh.distributed=on" in log
    assert "config missing" not in log  # shipped with the code

    assert run(tpu + ["start", "--config", "configs/tiny.py"], env).returncode == 0
    assert run(tpu + ["status"], env).stdout.startswith("running - -")
    assert run(tpu + ["stop"], env).returncode == 0
    assert run(tpu + ["status"], env).stdout.startswith("exited 0 stopped")
    assert (Path(env["FAKE_WORKER"]) / "cpt-jax" / "launch" / "tpu_worker.sh").exists()


COUNTING_TRAINER = """
    #!/usr/bin/env bash
    n=$(( $(cat "$RUNS" 2>/dev/null || echo 0) + 1 )); echo "$n" >"$RUNS"
    echo "run $n"
    if [ "$n" = 1 ] && [ -n "$FIRST_EXIT" ]; then exit "$FIRST_EXIT"; fi
    if [ "$n" = 1 ] && [ -n "$FIRST_WAITS" ]; then
      trap 'echo "  \\"interrupted\\": \\"SIGTERM\\""; exit 0' TERM
      sleep 60 & wait
    fi
    exit 0
"""


def restart_loop(env: dict, tmp_path: Path, states: list[str], **extra: str) -> subprocess.CompletedProcess:
    """`tpu_vm.sh start --restart` with describe answering ``states`` (then READY)."""
    trainer = script(tmp_path / "trainer", COUNTING_TRAINER)
    (tmp_path / "states").write_text("".join(f"{s}\n" for s in states))
    env = {**env, "CPT_JAX": str(trainer), "RUNS": str(tmp_path / "runs"), "CREATE_ARGS": "--spot",
           "FAKE_STATES": str(tmp_path / "states"), **extra}
    return run(["bash", str(LAUNCH / "tpu_vm.sh"), "start", "--restart", "--config", "configs/tiny.py"],
               env, timeout=90)


def verbs(env: dict) -> list[str]:
    return [c[3] for c in calls(env)]


def test_tpu_restart_loop_reads_a_failed_describe_as_unknown_and_restarts_after_exit_75(slice_env, tmp_path):
    out = restart_loop(slice_env, tmp_path, ["FAIL", "FAIL"], FIRST_EXIT="75")
    assert out.returncode == 0, out.stderr
    assert "describing my-v4-32 failed" in out.stderr and "temporary failure (75)" in out.stderr
    assert (tmp_path / "runs").read_text().strip() == "2"  # exit 75 started it again, then finished
    assert "delete" not in verbs(slice_env) and "create" not in verbs(slice_env)


def test_tpu_recreates_only_when_two_describes_agree_it_is_gone(slice_env, tmp_path):
    out = restart_loop(slice_env, tmp_path, ["PREEMPTED", "READY"], FIRST_EXIT="0")
    assert out.returncode == 0, out.stderr
    assert "delete" not in verbs(slice_env) and "create" not in verbs(slice_env)
    Path(slice_env["GCLOUD_LOG"]).unlink()
    (tmp_path / "runs").unlink()
    out = restart_loop(slice_env, tmp_path, ["PREEMPTED", "PREEMPTED"], FIRST_WAITS="1")
    assert out.returncode == 0, out.stderr
    assert "recreating my-v4-32" in out.stderr
    said = verbs(slice_env)
    assert said.index("delete") < said.index("create") and said.count("create") == 1
    assert (tmp_path / "runs").read_text().strip() == "2"  # started again on the new slice


def test_tpu_status_belongs_to_the_current_start(slice_env, tmp_path):
    trainer = script(tmp_path / "trainer", COUNTING_TRAINER)
    env = {**slice_env, "CPT_JAX": str(trainer), "RUNS": str(tmp_path / "runs"), "FIRST_EXIT": "3"}
    tpu = ["bash", str(LAUNCH / "tpu_vm.sh")]
    assert run(tpu + ["start", "--config", "configs/tiny.py"], env).returncode == 0
    assert run(tpu + ["wait"], env).returncode == 3
    state = Path(env["STATE_DIR"])
    first = (state / "current").read_text().strip()
    assert run(tpu + ["start", "--config", "configs/tiny.py"], env).returncode == 0
    assert (state / "current").read_text().strip() != first
    (state / f"exit_code.{first}").write_text("3\n")  # the first run's session, ending late
    waited = run(tpu + ["wait"], env)
    assert waited.returncode == 0 and waited.stdout.startswith("exited 0"), waited.stdout


def test_slurm_tasks_sharing_a_node_each_bind_their_own_gpus(tmp_path):
    fake = script(tmp_path / "cpt", '#!/usr/bin/env bash\necho "ids=$JAX_LOCAL_DEVICE_IDS"\n')
    seen = []
    for local in range(4):
        env = {"CPT_JAX": str(fake), "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "SLURM_PROCID": str(local),
               "SLURM_NTASKS": "4", "SLURM_LOCALID": str(local), "SLURM_NTASKS_PER_NODE": "4"}
        out = run(["bash", str(LAUNCH / "slurm_task.sh"), "--config", "c.py"], env)
        assert out.returncode == 0, out.stderr
        seen.append(out.stdout.strip().split("=", 1)[1])
    assert seen == ["0,1", "2,3", "4,5", "6,7"]
    env = {"CPT_JAX": str(fake), "CUDA_VISIBLE_DEVICES": "0,1,2", "SLURM_LOCALID": "0",
           "SLURM_NTASKS_PER_NODE": "2"}
    out = run(["bash", str(LAUNCH / "slurm_task.sh")], env)
    assert out.returncode == 2 and "3 GPUs" in out.stderr and "2 tasks" in out.stderr


def test_tpu_worker_records_an_abort_by_the_coordination_service_as_75(slice_env, tmp_path):
    trainer = script(tmp_path / "trainer", """
        #!/usr/bin/env bash
        echo "F0000 coordination_service_agent.cc:123] Heartbeat to coordination service failed" >&2
        kill -ABRT $$
    """)
    env = {**slice_env, "CPT_JAX": str(trainer)}
    tpu = ["bash", str(LAUNCH / "tpu_vm.sh")]
    assert run(tpu + ["start", "--config", "configs/tiny.py"], env).returncode == 0
    waited = run(tpu + ["wait"], env)
    assert waited.returncode == 75 and waited.stdout.startswith("exited 75"), waited.stdout
    log = run(tpu + ["logs", "3"], env).stdout
    assert "another process died or stopped answering: exit 75" in log
    other = script(tmp_path / "crash", "#!/usr/bin/env bash\necho 'some other fatal error' >&2\nkill -ABRT $$\n")
    assert run(tpu + ["start", "--config", "configs/tiny.py"], {**env, "CPT_JAX": str(other)}).returncode == 0
    assert run(tpu + ["wait"], env).returncode == 134  # not every abort is a lost peer
