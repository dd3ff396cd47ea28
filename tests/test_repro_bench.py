"""The accelerator-scale reproduction script at its tiny size on the CPU: it makes its corpus,
runs a part with the report code of `cpt-jax reproduce`, and keeps its PARTS in step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from experiments.repro import PARTS, stats

ROOT = Path(__file__).resolve().parents[1]


def test_bench_parts_match_the_reproductions():
    sys.path.insert(0, str(ROOT / "bench"))
    import repro_part

    assert repro_part.PARTS == PARTS


def test_bench_part_runs_at_tiny_size(tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "repro_part.py"), "lawa", "--size", "tiny",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    timing = json.loads((out / "lawa_timing.json").read_text())
    assert timing["part"] == "lawa" and timing["part_s"] > 0
    section = json.loads((out / "runs" / "lawa" / "section.json").read_text())
    assert section["verdict"] in stats.VERDICTS
    assert "## LAWA" in (out / "reproductions.md").read_text()
