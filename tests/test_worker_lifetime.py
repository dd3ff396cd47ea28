"""Grain worker processes (``data.workers > 0``) die with a training process killed by -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        out |= {int(child)} | _descendants(int(child))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_grain_workers_exit_after_kill_9_of_the_trainer(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-c", "import sys; from cpt_jax.cli import main; sys.exit(main(sys.argv[1:]))",
           "train", "--config", str(ROOT / "configs" / "tiny.py"), f"--config.run_dir={run}",
           "--config.train.steps=100000", "--config.train.log_every=1", "--config.data.workers=2",
           "--config.train.progress=false", "--config.logging.tensorboard=false"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
            assert time.monotonic() < deadline and proc.poll() is None, "training did not start"
            time.sleep(0.2)
        workers = _descendants(proc.pid)
        assert len(workers) >= 2, workers  # grain's worker processes (and their helpers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = [pid for pid in workers if _alive(pid)]
        assert not survivors, [open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:120] for p in survivors]
        assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["step"] >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)
