"""Storage that stops answering ends a run with one line and exit 75 (a restart loop retries
it); a full disk is one line naming the folder and the bytes needed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cpt_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_deadline_ends_the_process_with_one_line_and_exit_75():
    code = ("import time\nfrom cpt_jax.storage import Deadline\n"
            "with Deadline(0.5, 'saving step 3'):\n    time.sleep(30)\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 75 and time.monotonic() - start < 20
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "while saving step 3" in lines[0] and "exit code 75" in lines[0]


@pytest.fixture
def black_hole():
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_train_on_storage_that_stops_answering_exits_75(black_hole, tmp_path):
    pytest.importorskip("gcsfs")
    env = dict(os.environ, JAX_PLATFORMS="cpu", STORAGE_EMULATOR_HOST=black_hole,
               CPT_JAX_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-c", "import sys; from cpt_jax.cli import main; sys.exit(main(sys.argv[1:]))",
           "train", "--config", str(ROOT / "configs" / "tiny.py"), "--config.run_dir=gs://bucket/run",
           "--config.storage.timeout_s=3", "--config.train.steps=2", "--config.train.progress=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert out.returncode == 75, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "no answer within 3s while opening the run dir gs://bucket/run" in last
    assert "Traceback" not in out.stderr


def test_a_full_disk_is_one_line_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    from train_worker import load_cfg

    from cpt_jax import storage
    from cpt_jax.run_dir import RunDir
    from cpt_jax.train import loop

    common = ["checkpoint.every=2", "checkpoint.keep=0", "checkpoint.async_save=false"]
    run = tmp_path / "run"
    loop.run(load_cfg(str(run), ["train.steps=2", *common]), eval_sets={})
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda _: usage._replace(free=1000))
    with pytest.raises(UserError, match=r"checkpoints: 1,000 bytes free, checkpoint step 4 needs about [0-9,]+"):
        loop.run(load_cfg(str(run), ["train.steps=4", *common]), eval_sets={})
    assert RunDir(run).complete_steps() == [2]


def test_an_unreachable_endpoint_is_a_temporary_failure(monkeypatch, capsys):
    from cpt_jax import cli
    from cpt_jax.commands import verify

    def refused(args):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(verify, "run", refused)
    assert cli.main(["verify", "gs://bucket/run"]) == 75
    err = capsys.readouterr().err.strip()
    assert err.startswith("cpt-jax verify: error: Connection refused") and "exit 75" in err
    assert len(err.splitlines()) == 1


def test_a_verb_on_a_silent_endpoint_fails_within_the_request_timeout(black_hole, tmp_path):
    pytest.importorskip("gcsfs")
    env = dict(os.environ, JAX_PLATFORMS="cpu", STORAGE_EMULATOR_HOST=black_hole,
               CPT_JAX_GCS_REQUEST_TIMEOUT_S="1", CPT_JAX_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-c", "import sys; from cpt_jax.cli import main; sys.exit(main(sys.argv[1:]))",
           "verify", "gs://bucket/run"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 75, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "storage at gs://bucket/run did not answer" in lines[0]


def test_convert_onto_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import jax

    from cpt_jax import storage
    from cpt_jax.cli import main
    from cpt_jax.model import checkpoint, pythia

    mcfg = pythia.PythiaConfig.from_config({"vocab_size": 64, "hidden_size": 16, "num_layers": 1, "num_heads": 2})
    checkpoint.save_params(tmp_path / "src", jax.device_get(pythia.init_params(mcfg, jax.random.key(0))), mcfg)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda _: usage._replace(free=10))
    capsys.readouterr()
    assert main(["convert", "--from", str(tmp_path / "src"), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "10 bytes free, the params checkpoint needs about" in err


def _enospc_after(limit: int):
    """A ``Path.write_text`` that writes ``limit`` characters, then fails as a full disk does."""
    import errno

    def write_text(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[:limit])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    return write_text


def test_a_full_disk_while_writing_the_summary_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    import json

    from cpt_jax import storage
    from cpt_jax.run_dir import SUMMARY, RunDir

    run = RunDir(tmp_path / "run")
    run.write_json(SUMMARY, {"steps": 2, "final_loss": 3.5})
    before = (run.root / SUMMARY).read_bytes()
    new = {"steps": 4, "final_loss": 3.25, "note": "é"}
    needed = len((json.dumps(new, indent=2) + "\n").encode())  # bytes, not characters
    monkeypatch.setattr(storage.Path, "write_text", _enospc_after(10))
    with pytest.raises(UserError) as err:
        run.write_json(SUMMARY, new)
    text = str(err.value)
    assert text == (f"{run.root / SUMMARY}: no space left on the device while writing {SUMMARY} "
                    f"(it needs about {needed:,} bytes): free some space and run again")
    assert (run.root / SUMMARY).read_bytes() == before
    assert sorted(p.name for p in run.root.iterdir()) == [SUMMARY]  # no partial temporary file


def test_a_full_disk_while_writing_metrics_is_one_line(tmp_path):
    import json

    from cpt_jax.train.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path / "run", enabled=True, tensorboard=False, progress=False)
    writer.write({"step": 1, "loss": 2.5})
    writer._file.close()
    writer._file = open("/dev/full", "a")  # every write to it fails with ENOSPC, as a full disk does
    record = {"step": 2, "loss": 2.25, "lr": 1e-3}
    with pytest.raises(UserError) as err:
        writer.write(record)
    needed = len(json.dumps(record)) + 1
    assert str(err.value).startswith(f"{writer.path}: no space left on the device while writing a metrics "
                                     f"record (it needs about {needed:,} bytes)")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.5}\n'


def test_eval_onto_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import jax

    from cpt_jax import storage
    from cpt_jax.cli import main
    from cpt_jax.model import checkpoint, pythia

    mcfg = pythia.PythiaConfig.from_config({"vocab_size": 64, "hidden_size": 16, "num_layers": 1, "num_heads": 2})
    checkpoint.save_params(tmp_path / "src", jax.device_get(pythia.init_params(mcfg, jax.random.key(0))), mcfg)
    capsys.readouterr()
    monkeypatch.setattr(storage.Path, "write_text", _enospc_after(0))
    out = tmp_path / "eval.json"
    code = main(["eval", "--checkpoint", str(tmp_path / "src"), "--tasks", "none", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2, err
    assert f"{out}: no space left on the device while writing eval.json (it needs about" in err
    assert not out.exists()
