"""Bad input through the `cpt-jax` CLI: exit code 2, one line on stderr naming the problem, no
traceback, and nothing written, changed or deleted (the folder's contents hashed before and
after). The cases are in tests/bad_input_cases.py. Plus kill -9 during `convert --to` and
`average`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bad_input_cases import CASES
from bad_input_more import MORE, REPORTED
from cpt_jax.cli import main
from conftest import tree_digest

ROOT = Path(__file__).resolve().parents[1]
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = ("dir",)
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


TABLE = {**CASES, **MORE}


def test_the_table_is_large_enough():
    assert not CASES.keys() & MORE.keys()
    assert len(TABLE) + len(REPORTED) >= 290  # and the gs:// rows of tests/test_gcs.py


def _run_case(make_argv, tmp_path: Path, capsys, monkeypatch) -> tuple[int, str, str, tuple]:
    """Run one row in its folder: ``(exit code, stdout, stderr, the folder's state before)``."""
    monkeypatch.chdir(tmp_path)
    argv = make_argv(tmp_path)
    before = _snapshot(tmp_path), tree_digest(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err, before


@pytest.mark.parametrize("case", list(TABLE))
def test_bad_input_is_one_line(case, tmp_path, capsys, monkeypatch):
    make_argv, names = TABLE[case]
    code, _, err, before = _run_case(make_argv, tmp_path, capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error" in lines[0]
    assert names in lines[0], lines[0]
    after = _snapshot(tmp_path), tree_digest(tmp_path)
    lock = "run/lease.json.lock"  # the lease's empty lock file may stay after a refused resume
    if lock not in before[1] and after[1].get(lock) == EMPTY_SHA256:
        after = tuple({k: v for k, v in part.items() if k != lock} for part in after)
    assert after == before, "files were written, changed or deleted"


@pytest.mark.parametrize("case", list(REPORTED))
def test_damage_that_verify_reports(case, tmp_path, capsys, monkeypatch):
    """The other class: the input is accepted and the answer is the report (exit 1)."""
    make_argv, names = REPORTED[case]
    code, out, err, before = _run_case(make_argv, tmp_path, capsys, monkeypatch)
    failed = [line for line in out.splitlines() if line.startswith(names)]
    assert code == 1 and len(failed) == 1 and str(tmp_path) in failed[0], (out, err)
    assert "Traceback" not in err
    assert (_snapshot(tmp_path), tree_digest(tmp_path)) == before


# ---- kill -9 during writes -------------------------------------------------------------------

CLI = [sys.executable, "-c", "import sys; from cpt_jax.cli import main; sys.exit(main(sys.argv[1:]))"]


def _save(path: Path, seed: int) -> dict:
    from cpt_jax.model import checkpoint, pythia

    import jax

    mcfg = pythia.PythiaConfig.from_config({"vocab_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": 2})
    params = jax.device_get(pythia.init_params(mcfg, jax.random.key(seed)))
    checkpoint.save_params(path, params, mcfg)
    return params


def _load(path: Path) -> dict:
    from cpt_jax.model import checkpoint

    import jax

    return jax.device_get(checkpoint.load_params(path)[0])


def _same(a: dict, b: dict) -> bool:
    import jax

    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _kill_when(cmd: list[str], marker: Path, timeout: float = 120.0) -> bool:
    """Run ``cmd``; SIGKILL it as soon as ``marker`` exists. True when it was killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    end = time.time() + timeout
    while proc.poll() is None and time.time() < end:
        if marker.exists():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    proc.wait()
    return False


def test_kill_during_convert_keeps_the_previous_checkpoint(tmp_path):
    old = _save(tmp_path / "out", 0)
    new = _save(tmp_path / "src", 1)
    for marker in (".partial", ".partial/params/_CHECKPOINT_METADATA", ".partial/model.json"):
        _kill_when(CLI + ["convert", "--from", str(tmp_path / "src"), "--to", str(tmp_path / "out"),
                          "--force"], tmp_path / "out" / marker)  # out was not made by convert
        now = _load(tmp_path / "out")  # the whole old or the whole new checkpoint, never a mix
        assert _same(now, old) or _same(now, new)
    subprocess.run(CLI + ["convert", "--from", str(tmp_path / "src"), "--to", str(tmp_path / "out"),
                          "--force"], check=True, capture_output=True, cwd=ROOT)
    assert _same(_load(tmp_path / "out"), new)


def test_kill_during_average_leaves_sources_and_then_completes(tmp_path):
    a, b = _save(tmp_path / "a", 0), _save(tmp_path / "b", 1)
    (tmp_path / "keep").mkdir()
    _save(tmp_path / "keep" / "prev", 2)  # an earlier output beside the new one
    prev = _snapshot(tmp_path / "keep")
    cmd = CLI + ["average", "--ckpt", str(tmp_path / "a"), "--ckpt", str(tmp_path / "b"),
                 "--out", str(tmp_path / "avg")]
    _kill_when(cmd, tmp_path / "avg" / ".partial")
    assert _same(_load(tmp_path / "a"), a) and _same(_load(tmp_path / "b"), b)
    assert _snapshot(tmp_path / "keep") == prev
    if not (tmp_path / "avg" / "model.json").exists():  # killed before the swap: run it again
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, (done.stderr, sorted(os.listdir(tmp_path / "avg")))
    import jax

    want = jax.tree.map(lambda x, y: (np.asarray(x, np.float64) + np.asarray(y, np.float64)) / 2, a, b)
    for x, y in zip(jax.tree.leaves(_load(tmp_path / "avg")), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=1e-6, atol=1e-7)
