"""Offline LAWA: checkpoint choice, the streaming average against numpy, errors, memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cpt_jax import cli, lawa, tree_io
from cpt_jax.errors import UserError

SHAPES = {"embed_in": (64, 16), "layers/qkv/kernel": (2, 16, 48), "layers/qkv/bias": (2, 48), "final_ln/scale": (16,)}
MODEL = {"vocab_size": 64, "hidden_size": 16, "num_layers": 2, "num_heads": 2}


def write_run(run_dir, steps, shapes=SHAPES, dtype=np.float32, seed=0, model=MODEL):
    """Checkpoints in the engine's layout: RUN/checkpoints/<step>/{params,opt_state,extras,meta}."""
    import orbax.checkpoint as ocp

    rng = np.random.default_rng(seed)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "model.json"), "w") as f:
        json.dump(model, f)
    mngr = ocp.CheckpointManager(
        os.path.join(os.path.abspath(run_dir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=False),
    )
    written = {}
    for step in steps:
        flat = {p: rng.standard_normal(s).astype(dtype) for p, s in shapes.items()}
        params = tree_io.unflatten(flat)
        mngr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave({"mu": tree_io.unflatten(dict(flat))}),
            extras=ocp.args.JsonSave({}),
            meta=ocp.args.JsonSave({"step": step}),
        ))
        written[step] = flat
    mngr.wait_until_finished()
    mngr.close()
    return written


def restore_independently(step_dir):
    """The params item restored with orbax's StandardCheckpointer (not lawa's code path)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(os.path.join(os.path.abspath(step_dir), "params"))
    return {k: np.asarray(v) for k, v in tree_io.flatten(tree).items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("lawa") / "run")
    write_run(run_dir, [2, 4, 6, 8, 10])
    return run_dir


def test_select_steps():
    steps = [2, 4, 5, 6, 8, 10]
    assert lawa.select_steps(steps, last=3) == [6, 8, 10]
    assert lawa.select_steps(steps, last=2, every=4) == [4, 8]
    assert lawa.select_steps(steps, explicit=[8, 2]) == [2, 8]
    assert lawa.windows(steps, 2, every=2) == [[2, 4], [4, 6], [6, 8], [8, 10]]
    with pytest.raises(UserError, match="only 2 exist at multiples of 4"):
        lawa.select_steps(steps, last=3, every=4)
    with pytest.raises(UserError, match="no checkpoint at step 7"):
        lawa.select_steps(steps, explicit=[7])


def test_every_refuses_uneven_gaps_unless_allowed():
    steps = [100, 200, 400, 500, 550]  # 300 missing, 550 off the grid of nu = 100
    with pytest.raises(UserError) as info:
        lawa.select_steps(steps, last=4, every=100)
    msg = str(info.value)
    assert "\n" not in msg and msg == (
        "steps 100, 200, 400, 500 are not evenly spaced by --every 100 (gaps 100, 200, 100; "
        "no checkpoint at 300): pass --allow-uneven to average them anyway")
    assert lawa.select_steps(steps, last=4, every=100, allow_uneven=True) == [100, 200, 400, 500]
    assert lawa.select_steps(steps, last=2, every=100) == [400, 500]  # the window is complete
    with pytest.raises(UserError, match="no checkpoint at 300"):
        lawa.windows(steps, 2, every=100)
    assert lawa.windows(steps, 2, every=100, allow_uneven=True) == [[100, 200], [200, 400], [400, 500]]


def test_cli_last3_equals_numpy_mean_and_never_reads_opt_state(run, tmp_path):
    # optimizer state must never be read: break it in every checkpoint
    for step in (6, 8, 10):
        shutil.rmtree(os.path.join(run, "checkpoints", str(step), "opt_state"))
    out = str(tmp_path / "avg")
    assert cli.main(["average", "--run", run, "--last", "3", "--out", out]) == 0
    got = restore_independently(out)
    want = [restore_independently(os.path.join(run, "checkpoints", str(s))) for s in (6, 8, 10)]
    assert set(got) == set(SHAPES)
    for path in SHAPES:
        ref = np.mean(np.stack([w[path] for w in want]).astype(np.float64), axis=0)
        assert got[path].dtype == np.float32
        np.testing.assert_allclose(got[path], ref, rtol=1e-6, atol=1e-7)
    assert json.load(open(os.path.join(out, "lawa.json")))["steps"] == [6, 8, 10]
    assert json.load(open(os.path.join(out, "model.json")))["hidden_size"] == 16


def _listed(folder: str) -> list[str]:
    """The windows written (not the output's ownership record)."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def test_cli_windows_and_explicit_steps(run, tmp_path):
    out = str(tmp_path / "win")
    assert cli.main(["average", "--run", run, "--last", "2", "--every", "4", "--windows", "--out", out]) == 0
    assert _listed(out) == ["8"]  # multiples of 4: steps 4, 8 -> one window
    out2 = str(tmp_path / "win2")
    assert cli.main(["average", "--run", run, "--last", "2", "--windows", "--out", out2]) == 0
    assert sorted(map(int, _listed(out2))) == [4, 6, 8, 10]
    ck = {s: restore_independently(os.path.join(run, "checkpoints", str(s))) for s in (2, 4, 6, 8, 10)}
    for end, start in ((4, 2), (6, 4), (8, 6), (10, 8)):
        got = restore_independently(os.path.join(out2, str(end)))
        for path in SHAPES:
            np.testing.assert_allclose(got[path], (ck[start][path] + ck[end][path]) / 2, rtol=1e-6)
    out3 = str(tmp_path / "explicit")
    assert cli.main(["average", "--run", run, "--steps", "2,10", "--out", out3]) == 0
    got = restore_independently(out3)
    np.testing.assert_allclose(got["embed_in"], (ck[2]["embed_in"] + ck[10]["embed_in"]) / 2, rtol=1e-6)


def test_cli_every_with_a_missing_checkpoint(tmp_path, capsys):
    run_dir = str(tmp_path / "gappy")
    write_run(run_dir, [2, 4, 8, 10])  # step 6 missing
    out = str(tmp_path / "avg")
    assert cli.main(["average", "--run", run_dir, "--last", "3", "--every", "2", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "not evenly spaced by --every 2 (gaps 4, 2; no checkpoint at 6)" in err
    assert err.count("\n") == 1
    assert cli.main(["average", "--run", run_dir, "--last", "3", "--every", "2",
                     "--allow-uneven", "--out", out]) == 0
    assert "averaging steps [4, 8, 10] (gaps [2, 4])" in capsys.readouterr().out
    got = restore_independently(out)
    want = [restore_independently(os.path.join(run_dir, "checkpoints", str(s))) for s in (4, 8, 10)]
    for path in SHAPES:
        ref = np.mean(np.stack([w[path] for w in want]).astype(np.float64), axis=0)
        np.testing.assert_allclose(got[path], ref, rtol=1e-6, atol=1e-7)


def test_bfloat16_sums_in_fp32(tmp_path):
    import ml_dtypes

    run_dir = str(tmp_path / "bf")
    written = write_run(run_dir, [1, 2, 3, 4], dtype=ml_dtypes.bfloat16, seed=3)
    got = tree_io.flatten(lawa.average(lawa.run_sources(run_dir, [1, 2, 3, 4])))
    for path in SHAPES:
        ref = np.mean([written[s][path].astype(np.float32) for s in (1, 2, 3, 4)], axis=0)
        assert got[path].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got[path], ref.astype(ml_dtypes.bfloat16))


def test_mismatched_checkpoints_are_one_line_errors(tmp_path, capsys):
    run_dir = str(tmp_path / "mix")
    write_run(run_dir, [1, 2])
    bad = dict(SHAPES, **{"layers/qkv/bias": (2, 40)})
    write_run(str(tmp_path / "other"), [3], shapes=bad)
    shutil.move(str(tmp_path / "other" / "checkpoints" / "3"), os.path.join(run_dir, "checkpoints", "3"))
    code = cli.main(["average", "--run", run_dir, "--last", "3", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "step 3: leaf 'layers/qkv/bias' is float32[2, 40], step 1 has float32[2, 48]" in err
    missing = {k: v for k, v in SHAPES.items() if k != "final_ln/scale"}
    write_run(str(tmp_path / "third"), [4], shapes=missing)
    with pytest.raises(UserError, match="step 4: leaf 'final_ln/scale' is missing"):
        lawa.average(lawa.run_sources(run_dir, [1]) + lawa.run_sources(str(tmp_path / "third"), [4]))
    write_run(str(tmp_path / "wide"), [5], model=dict(MODEL, hidden_size=32))
    a, b = os.path.join(run_dir, "checkpoints", "1"), str(tmp_path / "wide" / "checkpoints" / "5")
    with pytest.raises(UserError, match="model.json differs from .* in hidden_size"):
        lawa.average([lawa.dir_source(a), lawa.dir_source(b)])
    assert cli.main(["average", "--run", run_dir, "--last", "1", "--out", run_dir]) == 2
    assert "is a training run directory" in capsys.readouterr().err


WRITER = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, numpy as np
pid, port, run = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("fsdp",)), P("fsdp"))
options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
mngr = ocp.CheckpointManager(os.path.join(run, "checkpoints"), options=options)
for step in (1, 2, 3):
    x = np.arange(32 * 8, dtype=np.float32).reshape(32, 8) * step
    arr = jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave({"w": arr}), meta=ocp.args.JsonSave({"step": step})))
mngr.wait_until_finished()
mngr.close()
if pid == 0:
    json.dump({}, open(os.path.join(run, "model.json"), "w"))
"""


def test_checkpoint_written_by_two_processes(tmp_path):
    """Params sharded over 4 devices of 2 jax processes (one file set per process) average on
    one host to the numpy mean."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    run_dir = str(tmp_path / "mp")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i), port, run_dir],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in (0, 1)]
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out.decode()[-2000:]
    params_dir = os.path.join(run_dir, "checkpoints", "3", "params")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(params_dir))
    got = lawa.average(lawa.run_sources(run_dir, [1, 2, 3]))["w"]
    x = np.arange(32 * 8, dtype=np.float32).reshape(32, 8)
    np.testing.assert_array_equal(got, (x * 1 + x * 2 + x * 3) / 3)


MEMORY_CHILD = r"""
import json, sys
from cpt_jax import lawa
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
run, k = sys.argv[1], int(sys.argv[2])
sources = lawa.run_sources(run, lawa.select_steps(lawa.run_steps(run), last=k))
lawa.average(lawa.run_sources(run, [1]))  # warm orbax / tensorstore
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark
before = status("VmRSS")
lawa.average(sources)
print(json.dumps({"rise": status("VmHWM") - before}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_peak_memory_flat_in_k(tmp_path):
    """Peak RSS rise for k = 8 is about that for k = 2 (streaming), below two param copies."""
    shapes = {f"w{i}": (512, 1024) for i in range(4)}  # 8 MiB fp32 in four 2 MiB leaves
    run_dir = str(tmp_path / "mem")
    write_run(run_dir, list(range(1, 9)), shapes=shapes)
    nbytes = 4 * 512 * 1024 * 4
    rise = {}
    for k in (2, 8):
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, run_dir, str(k)],
                             check=True, capture_output=True, text=True)
        rise[k] = json.loads(out.stdout.strip().splitlines()[-1])["rise"]
    print({k: round(v / nbytes, 2) for k, v in rise.items()}, "param copies")
    assert rise[8] < 1.5 * rise[2] + 2**20, rise
    assert rise[8] < 2.0 * nbytes, (rise, nbytes)


def test_to_hf_of_a_pythia_average(tmp_path):
    """--to-hf writes a Hugging Face dir whose tensors read back equal to the average."""
    import dataclasses

    import jax

    from cpt_jax.model import hf, pythia

    mcfg = pythia.PythiaConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2)
    tree = jax.eval_shape(lambda: pythia.init_params(mcfg, jax.random.key(0)))
    shapes = {k: v.shape for k, v in tree_io.flatten(tree).items()}
    run_dir = str(tmp_path / "py")
    written = write_run(run_dir, [1, 2, 3], shapes=shapes, model=dataclasses.asdict(mcfg))
    out, out_hf = str(tmp_path / "avg"), str(tmp_path / "hf")
    assert cli.main(["average", "--run", run_dir, "--last", "2", "--out", out, "--to-hf", out_hf]) == 0
    params, config = hf.load_params(out_hf)
    assert config.hidden_size == 16
    got = {k: np.asarray(v) for k, v in tree_io.flatten(params).items()}
    for path in shapes:
        np.testing.assert_allclose(got[path], (written[2][path] + written[3][path]) / 2, rtol=1e-6, atol=1e-7)


def test_cli_ckpt_dirs_and_flag_errors(run, tmp_path, capsys):
    """--ckpt averages step dirs and params-only checkpoints; bad flag mixes are one-line errors."""
    steps = [os.path.join(run, "checkpoints", str(s)) for s in (2, 4)]
    first = str(tmp_path / "first")
    assert cli.main(["average", "--ckpt", steps[0], "--ckpt", steps[1], "--out", first]) == 0
    second = str(tmp_path / "second")  # a params-only checkpoint (own model.json) with a step dir
    assert cli.main(["average", "--ckpt", first, "--ckpt", steps[1], "--out", second]) == 0
    a, b = (restore_independently(p) for p in steps)
    got = restore_independently(second)
    for path in SHAPES:
        np.testing.assert_allclose(got[path], ((a[path] + b[path]) / 2 + b[path]) / 2, rtol=1e-6, atol=1e-7)
    capsys.readouterr()
    for argv, message in (
        (["--run", run, "--last", "2", "--windows", "--to-hf", str(tmp_path / "h")], "--to-hf writes one average"),
        (["--run", run, "--steps", "2,x"], "--steps expects comma-separated integers"),
        (["--run", run, "--steps", "2,4", "--last", "2"], "either explicit steps or --last/--every"),
        (["--ckpt", steps[0], "--last", "2"], "--ckpt averages exactly the dirs given"),
        (["--run", run, "--last", "0"], "must be >= 1, got 0"),
    ):
        assert cli.main(["average", *argv, "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    run_dir = str(tmp_path / "bad")
    write_run(run_dir, [1, 2])
    params = os.path.join(run_dir, "checkpoints", "2", "params")
    os.remove(os.path.join(params, "_METADATA"))
    with pytest.raises(UserError, match=r"cannot read checkpoint metadata in .*/2/params") as info:
        lawa.average(lawa.run_sources(run_dir, [1, 2]))
    assert "\n" not in str(info.value)
