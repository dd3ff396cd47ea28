"""Exact resume: a run stopped by SIGTERM and resumed logs bit-identical losses to an
uninterrupted run (which goes through the `cpt-jax train` verb); train.init_from starts from a
run's weights. Runs in one subprocess so the
signal never reaches pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sigterm_then_resume_is_bitwise_identical(tmp_path):
    """2N uninterrupted (through the CLI) vs SIGTERM during step N+1's batch and a resume."""
    n = 4
    common = [f"train.steps={2 * n}", "checkpoint.every=0", "train.micro_batches=2"]
    jobs = [
        {"mode": "cli", "run_dir": str(tmp_path / "full"), "overrides": common},
        {"mode": "sigterm", "run_dir": str(tmp_path / "cut"), "overrides": common, "stop_at": n},
        {"mode": "train", "run_dir": str(tmp_path / "cut"), "overrides": common},
        {"mode": "train", "run_dir": str(tmp_path / "cpt"),
         "overrides": common + [f"train.init_from={tmp_path / 'full'}", "schedule.name=constant"]},
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "train_worker.py"), json.dumps(jobs)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli, cut, resumed, cpt = json.loads(proc.stdout.splitlines()[-1][len("RESULT "):])
    assert cli["code"] == 0 and cli["summary"]["steps"] == 2 * n
    assert cut["interrupted"] == "SIGTERM" and cut["steps"] == n + 1 and cut["last_checkpoint"] == n + 1
    assert resumed["resumed_from"] == n + 1 and resumed["steps"] == 2 * n
    def read(d: str) -> list[tuple[int, float]]:
        lines = (tmp_path / d / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["train/loss"]) for r in map(json.loads, lines) if "train/loss" in r]
    full, cut_lines = read("full"), read("cut")
    assert [s for s, _ in full] == list(range(1, 2 * n + 1))
    assert cut_lines == full  # same steps, bit-identical float losses
    keys = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[0])
    for k in ("step", "train/loss", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens"):
        assert k in keys
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["steps"] == 2 * n and set(summary["final_eval"]) == {"noise", "pattern", "trivial"}
    assert json.loads((tmp_path / "full" / "model.json").read_text())["hidden_size"] == 64
    # train.init_from: the full run's final weights, fresh optimizer, step 0; its first logged
    # loss is the loss of those weights on batch 0, computed here independently
    import jax.numpy as jnp

    from cpt_jax.data.pipeline import TrainData
    from cpt_jax.losses import next_token_losses
    from cpt_jax.model.checkpoint import load_params
    from train_worker import load_cfg

    assert cpt["resumed_from"] is None and cpt["steps"] == 2 * n
    params, mcfg = load_params(tmp_path / "full")
    cfg = load_cfg(str(tmp_path / "x"), common)
    batch0 = TrainData.from_config(cfg).batch(0)
    expected = float(jnp.mean(next_token_losses(params, jnp.asarray(batch0["tokens"]), mcfg)))
    first = read("cpt")[0]
    assert first[0] == 1 and abs(first[1] - expected) <= 1e-5 * expected
    assert first[1] < full[0][1]  # it starts from trained weights, not from scratch
