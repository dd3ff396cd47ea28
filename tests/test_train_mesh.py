"""The engine on several (fake CPU) devices: the same losses on every mesh, fsdp shards the
parameters ~1/n per device, and a run saved on 8 devices resumes on 4.

The multi-device runs happen in subprocesses with ``--xla_force_host_platform_device_count``;
the single-device reference runs in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cpt_jax.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "train_worker.py"
STEPS = 20


def worker(devices: int, jobs: list[dict]) -> list:
    """Run ``jobs`` (see train_worker.py) in one subprocess with ``devices`` CPU devices."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(WORKER), json.dumps(jobs, default=str)],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def step_losses(run_dir: Path) -> dict[int, float]:
    """``{step: train/loss}`` from metrics.jsonl (one record per step, as readers see it)."""
    return {r["step"]: r["train/loss"] for r in RunDir(run_dir).read_metrics() if "train/loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from cpt_jax.train import loop
    from train_worker import load_cfg

    tmp = tmp_path_factory.mktemp("mesh")
    common = [f"train.steps={STEPS}", "train.batch_size=16", "train.micro_batches=2"]
    single = tmp / "single"
    loop.run(load_cfg(str(single), common), eval_sets={})
    train = lambda d, *o: {"mode": "train", "run_dir": str(d), "overrides": common + list(o)}  # noqa: E731
    _, _, nbytes = worker(8, [
        train(tmp / "fsdp8", "mesh.fsdp=8", "checkpoint.every=10", "checkpoint.keep=0"),
        train(tmp / "d2f2t2", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"),
        {"mode": "bytes", "run_dir": str(tmp / "bytes"), "overrides": ["mesh.fsdp=8"]},
    ])
    moved = tmp / "fsdp8_on4"
    shutil.copytree(tmp / "fsdp8", moved)
    shutil.rmtree(moved / "checkpoints" / str(STEPS))  # as if stopped after step 10's save:
    (moved / "summary.json").unlink()  # a finished run's summary would refuse the resume
    (summary,) = worker(4, [train(moved, "mesh.fsdp=4", "checkpoint.keep=0")])
    assert summary["resumed_from"] == 10 and summary["mesh"]["fsdp"] == 4
    return {"single": single, "fsdp8": tmp / "fsdp8", "d2f2t2": tmp / "d2f2t2", "on4": moved,
            "bytes": nbytes}


@pytest.mark.slow
def test_meshes_give_the_same_losses(runs):
    ref = step_losses(runs["single"])
    assert sorted(ref) == list(range(1, STEPS + 1))
    for name in ("fsdp8", "d2f2t2"):
        got = step_losses(runs[name])
        assert sorted(got) == sorted(ref)
        a, b = np.array([ref[s] for s in ref]), np.array([got[s] for s in ref])
        np.testing.assert_allclose(b, a, rtol=1e-5, err_msg=name)
    assert ref[STEPS] < ref[1]  # it trains


@pytest.mark.slow
def test_restore_onto_a_smaller_mesh(runs):
    ref, got = step_losses(runs["fsdp8"]), step_losses(runs["on4"])
    steps = range(11, STEPS + 1)
    np.testing.assert_allclose([got[s] for s in steps], [ref[s] for s in steps], rtol=1e-5)


@pytest.mark.slow
def test_fsdp_shards_parameter_bytes(runs):
    """Each device holds 1/8 of every leaf with an ``embed`` (fsdp) dimension and all of the
    few leaves without one (qkv / fc1 biases: ``heads`` / ``mlp`` go to the tensor axis)."""
    out = runs["bytes"]
    expected = sum(n / 8 if "embed" in names else n for n, names in out["leaves"])
    total = sum(n for n, _ in out["leaves"])
    per = np.array(list(out["per_device"].values()))
    assert len(per) == 8
    np.testing.assert_array_equal(per, expected)
    assert per.max() < 1.05 * total / 8
