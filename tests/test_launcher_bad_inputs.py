"""Bad input to the launch/ scripts (a stub cpt-jax, a stub gcloud, simulated SLURM variables):
each is refused with a non-zero exit code and an error naming the problem, starts no trainer,
and changes nothing in its folder (hashed before and after)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import tree_digest
from test_launchers import LAUNCH, STUB_GCLOUD, script

GPUS8 = {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
TPU = {"TPU_NAME": "my-v4-32", "ZONE": "us-central2-b"}
# (script, arguments, environment, exit code, text the error names)
CASES = {
    "local: no arguments": ("local_multiprocess.sh", [], {}, 2, "usage"),
    "local: processes not a number": ("local_multiprocess.sh", ["two", "1", "--config", "c.py"], {}, 2,
                                      "NUM_PROCESSES must be a positive integer, got 'two'"),
    "local: zero processes": ("local_multiprocess.sh", ["0", "1", "--config", "c.py"], {}, 2, "NUM_PROCESSES"),
    "local: zero devices": ("local_multiprocess.sh", ["2", "0", "--config", "c.py"], {}, 2, "DEVICES_PER_PROCESS"),
    "local: negative devices": ("local_multiprocess.sh", ["2", "-1", "--config", "c.py"], {}, 2,
                                "DEVICES_PER_PROCESS"),
    "slurm: GPUs not shared evenly": ("slurm_task.sh", ["--config", "c.py"], {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4",
                                      "SLURM_NTASKS_PER_NODE": "2", "SLURM_LOCALID": "0"}, 2, "5 GPUs"),
    "slurm: zero tasks per node": ("slurm_task.sh", ["--config", "c.py"], {**GPUS8, "SLURM_NTASKS_PER_NODE": "0"},
                                   2, "SLURM_NTASKS_PER_NODE '0'"),
    "slurm: local id beyond the node's tasks": ("slurm_task.sh", ["--config", "c.py"],
                                                {**GPUS8, "SLURM_NTASKS_PER_NODE": "4", "SLURM_LOCALID": "5"}, 2,
                                                "SLURM_LOCALID '5'"),
    "slurm: local id not a number": ("slurm_task.sh", ["--config", "c.py"],
                                     {**GPUS8, "SLURM_NTASKS_PER_NODE": "2", "SLURM_LOCALID": "x"}, 2,
                                     "SLURM_LOCALID 'x'"),
    "tpu: no command": ("tpu_vm.sh", [], TPU, 2, "tpu_vm.sh"),
    "tpu: unknown command": ("tpu_vm.sh", ["launch"], TPU, 2, "tpu_vm.sh"),
    "tpu: start without a config": ("tpu_vm.sh", ["start"], TPU, 2, "tpu_vm.sh"),
    "tpu: config missing": ("tpu_vm.sh", ["start", "--config", "nope.py"], TPU, 2, "nope.py"),
    "tpu: no TPU name": ("tpu_vm.sh", ["start", "--config", "configs/tiny.py"], {"ZONE": "z"}, 1, "TPU_NAME"),
    "tpu: no zone": ("tpu_vm.sh", ["start", "--config", "configs/tiny.py"], {"TPU_NAME": "t"}, 1, "ZONE"),
    "tpu: poll not a number": ("tpu_vm.sh", ["start", "--restart", "--config", "configs/tiny.py"],
                               {**TPU, "POLL": "soon"}, 2, "POLL must be a positive number"),
    "tpu: poll zero": ("tpu_vm.sh", ["status"], {**TPU, "POLL": "0"}, 2, "POLL"),
    "worker: no verb": ("tpu_worker.sh", [], {}, 2, "usage"),
    "worker: unknown verb": ("tpu_worker.sh", ["restart"], {}, 2, "usage"),
    "worker: logs of a word": ("tpu_worker.sh", ["logs", "many"], {}, 2, "got 'many'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_launcher_input_is_refused(case, tmp_path):
    name, args, extra, code, text = CASES[case]
    home = tmp_path / "home"  # what the launcher could touch: the worker's home, logs, state
    home.mkdir()
    (home / "keep.txt").write_text("saved before")
    started = tmp_path / "trainer_started"
    trainer = script(tmp_path / "cpt", f"#!/usr/bin/env bash\ntouch {started}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script(bin_dir / "gcloud", STUB_GCLOUD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "ZONE", "POLL"))}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_LOG=str(tmp_path / "gcloud.log"),
               FAKE_WORKER=str(home), STATE_DIR=str(home / "state"), RUN_LOG_DIR=str(home / "logs"),
               CPT_JAX=str(trainer), HOME=str(home), **extra)
    before = tree_digest(home)
    out = _run(name, args, env)
    assert out.returncode == code, (out.returncode, out.stderr)
    assert text in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not started.exists() and not Path(env["GCLOUD_LOG"]).exists()
    assert tree_digest(home) == before


def _run(name: str, args: list[str], env: dict):
    import subprocess

    return subprocess.run(["bash", str(LAUNCH / name), *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
