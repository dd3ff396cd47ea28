"""The run directory: one writer (lease), the same experiment on resume, a readable checkpoint,
one metrics line per step, and the layout helpers (local paths; gs:// is in test_gcs.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cpt_jax import storage
from cpt_jax.errors import UserError
from cpt_jax.lease import Lease
from cpt_jax.run_dir import RunDir, config_changes, merge_by_step, parse_jsonl, trim_metrics
from cpt_jax.train import loop

sys.path.insert(0, str(Path(__file__).parent))
from train_worker import load_cfg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in RunDir(run).read_metrics() if "train/loss" in r]


def _raw_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["step"] for x in lines if "train/loss" in json.loads(x)]


def _worker(jobs: list[dict]) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, str(ROOT / "tests" / "train_worker.py"), json.dumps(jobs)],
                          capture_output=True, text=True, env=env, timeout=600)


# -- pure helpers -------------------------------------------------------------------------


def test_config_changes_split_meaning_from_schedule():
    saved = {"seed": 0, "run_dir": "a", "train": {"batch_size": 8, "steps": 10},
             "optim": {"peak_lr": 1e-3}, "data": {"replay_fraction": 0.1}}
    now = {"seed": 1, "run_dir": "b", "train": {"batch_size": 16, "steps": 20, "new_key": 1},
           "optim": {"peak_lr": 3e-4}, "data": {"replay_fraction": 0.1}}
    refused, allowed = config_changes(saved, now)
    assert refused == ["seed: 0 -> 1", "train.batch_size: 8 -> 16"]
    assert allowed == ["optim.peak_lr: 0.001 -> 0.0003", "train.steps: 10 -> 20"]


def test_metrics_readers_see_one_record_per_step(tmp_path):
    text = "\n".join(json.dumps(r) for r in [
        {"step": 1, "train/loss": 3.0}, {"step": 2, "train/loss": 2.0}, {"step": 2, "eval/a/loss": 5.0},
        {"step": 2, "train/loss": 1.5}]) + '\n{"step": 3, "train/lo'  # torn last line
    records = merge_by_step(parse_jsonl(text))
    assert records == [{"step": 1, "train/loss": 3.0}, {"step": 2, "train/loss": 1.5, "eval/a/loss": 5.0}]
    f = tmp_path / "metrics.jsonl"
    f.write_text(text)
    assert trim_metrics(f, 1) == 4 and parse_jsonl(f.read_text()) == [{"step": 1, "train/loss": 3.0}]
    assert trim_metrics(f, None) == 1 and f.read_text() == ""


def test_storage_paths_are_absolute_and_json_writes_atomic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(storage.path("rel/x")) == str(tmp_path / "rel" / "x")
    assert os.fspath(storage.path("gs://bucket/a/")) == "gs://bucket/a"
    with pytest.raises(UserError, match="needs a bucket"):
        storage.path("gs://")
    storage.write_json(tmp_path / "d" / "v.json", {"x": float("nan"), "y": [1, np.float32(np.inf)],
                                                   "run": "runs/NaN_Infinity"})
    assert storage.read_json(tmp_path / "d" / "v.json") == {"x": None, "y": [1, None], "run": "runs/NaN_Infinity"}
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["v.json"]  # no temporary left
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        storage.read_json(tmp_path / "bad.json")


# -- the lease ------------------------------------------------------------------------------


def test_lease_refuses_a_live_holder_and_takes_over_a_dead_or_silent_one(tmp_path):
    file = tmp_path / "lease.json"
    first = Lease(file, stale_after_s=60)
    first.acquire()
    with pytest.raises(UserError, match=rf"in use by pid {os.getpid()} on {socket.gethostname()}"):
        Lease(file, stale_after_s=60).acquire()
    first.release()
    assert not file.exists()

    said: list[str] = []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    file.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "heartbeat": time.time()}))
    taker = Lease(file, stale_after_s=60, log=said.append)
    taker.acquire()
    assert "is no longer running" in said[-1] and json.loads(file.read_text())["pid"] == os.getpid()
    taker.release()

    file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 120}))
    taker = Lease(file, stale_after_s=60, log=said.append)
    taker.acquire()
    assert "elsewhere" in said[-1] and "went silent" in said[-1]
    taker.release()


def _within(seconds: float, condition) -> bool:
    """Whether ``condition()`` becomes true within ``seconds`` (polled)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_heartbeat_renews_and_notices_a_takeover(tmp_path):
    file = tmp_path / "lease.json"
    lease = Lease(file, stale_after_s=0.5, log=lambda _: None)
    lease.acquire()
    beat0 = json.loads(file.read_text())["heartbeat"]
    assert _within(5.0, lambda: json.loads(file.read_text())["heartbeat"] > beat0)  # renewed
    file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time()}))
    assert _within(5.0, lambda: lease.lost)
    lease.release()  # never deletes a lease that is no longer ours
    assert json.loads(file.read_text())["host"] == "elsewhere"


# -- training on a run dir ------------------------------------------------------------------


def test_second_run_refused_config_change_refused_schedule_change_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_cfg(str(run), ["train.steps=4", "checkpoint.every=2"])
    holder = Lease(run / "lease.json")
    holder.acquire()  # a live run holds the dir
    with pytest.raises(UserError, match="is in use by pid"):
        loop.run(cfg, eval_sets={})
    holder.release()
    loop.run(cfg, eval_sets={})
    assert not (run / "lease.json").exists()

    bigger = load_cfg(str(run), ["train.steps=8", "checkpoint.every=2", "train.batch_size=4", "seed=3"])
    with pytest.raises(UserError, match=r"seed: 0 -> 3; train.batch_size: 8 -> 4"):
        loop.run(bigger, eval_sets={})
    assert json.loads((run / "config.json").read_text())["train"]["batch_size"] == 8  # untouched

    longer = load_cfg(str(run), ["train.steps=8", "checkpoint.every=2", "optim.peak_lr=2.5e-3"])
    capsys.readouterr()
    summary = loop.run(longer, eval_sets={})
    err = capsys.readouterr().err
    assert f"resuming {run} from step 4" in err and "optim.peak_lr" in err
    assert summary["resumed_from"] == 4 and summary["steps"] == 8
    assert json.loads((run / "config.4.json").read_text())["train"]["steps"] == 4
    assert json.loads((run / "config.json").read_text())["optim"]["peak_lr"] == 2.5e-3

    before = (run / "metrics.jsonl").read_text(), (run / "summary.json").read_text()
    again = loop.run(longer, eval_sets={})
    assert "finished at step 8 earlier" in capsys.readouterr().err
    assert again["steps"] == 8
    assert ((run / "metrics.jsonl").read_text(), (run / "summary.json").read_text()) == before

    allowed = load_cfg(str(run), ["train.steps=10", "checkpoint.every=2", "optim.peak_lr=2.5e-3",
                                  "train.batch_size=4", "train.allow_config_change=true"])
    assert loop.run(allowed, eval_sets={})["steps"] == 10
    assert json.loads((run / "config.8.json").read_text())["train"]["batch_size"] == 8


def test_unreadable_newest_checkpoint_falls_back_and_is_kept(tmp_path, capsys):
    common = ["checkpoint.every=2", "checkpoint.keep=0"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    cfg = load_cfg(str(cut), ["train.steps=8", *common])
    loop.run(load_cfg(str(full), ["train.steps=8", *common]), eval_sets={})
    loop.run(cfg, eval_sets={})
    (cut / "summary.json").unlink()  # as if killed after the last save
    files = [p for p in (cut / "checkpoints" / "8" / "params").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])  # truncated
    capsys.readouterr()
    summary = loop.run(cfg, eval_sets={})
    err = capsys.readouterr().err
    assert "checkpoint step 8 cannot be restored" in err and "resuming from step 6" in err
    assert len([line for line in err.splitlines() if "cannot be restored" in line]) == 1
    assert summary["resumed_from"] == 6 and summary["steps"] == 8
    assert (cut / "checkpoints" / "8.unreadable" / "params").is_dir()  # moved aside, not deleted
    assert RunDir(cut).latest_step() == 8  # saved again
    assert _losses(cut) == _losses(full)  # steps 7-8 retrained exactly


def test_hard_kill_then_resume_logs_each_step_once_and_bitwise(tmp_path):
    common = ["train.steps=8", "checkpoint.every=3", "checkpoint.async_save=false"]
    jobs = [{"mode": "train", "run_dir": str(tmp_path / "full"), "overrides": common},
            {"mode": "sigkill", "run_dir": str(tmp_path / "cut"), "overrides": common, "stop_at": 5}]
    proc = _worker(jobs)
    assert proc.returncode == -9  # the second job killed its own process
    cut = tmp_path / "cut"
    assert RunDir(cut).latest_step() == 3 and max(_raw_steps(cut)) >= 4  # logged past the checkpoint
    proc = _worker([{"mode": "train", "run_dir": str(cut), "overrides": common}])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is no longer running" in proc.stderr  # the killed run's lease was taken over
    assert _raw_steps(cut) == list(range(1, 9))  # one line per step in the file itself
    assert _losses(cut) == _losses(tmp_path / "full")


def test_init_from_another_head_count_is_refused_before_anything_is_written(tmp_path):
    import dataclasses

    import jax

    from cpt_jax.model import pythia
    from cpt_jax.model.checkpoint import save_params

    cfg = load_cfg(str(tmp_path / "run"), ["train.steps=2"])
    mcfg = pythia.PythiaConfig.from_config(cfg.model)
    other = dataclasses.replace(mcfg, num_heads=mcfg.num_heads * 2)  # same tensor shapes
    save_params(tmp_path / "ckpt", pythia.init_params(other, jax.random.key(0)), other)
    cfg = load_cfg(str(tmp_path / "run"), ["train.steps=2", f"train.init_from={tmp_path / 'ckpt'}"])
    with pytest.raises(UserError, match=rf"model.num_heads is {other.num_heads} there but {mcfg.num_heads}"):
        loop.run(cfg, eval_sets={})
    assert not (tmp_path / "run").exists()


def test_lease_of_the_same_job_is_taken_over_at_once_another_job_waits(tmp_path, monkeypatch):
    file = tmp_path / "lease.json"
    held = {"host": "node-7", "pid": 4242, "heartbeat": time.time(), "start": time.time(), "job": "slurm:42"}
    file.write_text(json.dumps(held))
    monkeypatch.delenv("CPT_JAX_JOB_ID", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "43")  # another job: the live heartbeat keeps it out
    with pytest.raises(UserError, match="in use by pid 4242 on node-7"):
        Lease(file, stale_after_s=60).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # the same job, requeued onto other nodes
    said: list[str] = []
    lease = Lease(file, stale_after_s=60, log=said.append)
    lease.acquire()
    assert "belongs to this job (slurm:42), which restarted" in said[-1]
    assert json.loads(file.read_text())["job"] == "slurm:42" and json.loads(file.read_text())["pid"] == os.getpid()
    lease.release()
    file.write_text("[1, 2]")  # a damaged lease record holds nothing
    lease = Lease(file, stale_after_s=60, log=said.append)
    lease.acquire()
    lease.release()
