"""LAWA with the training engine: online window/EMA through an interrupted-and-resumed run, the
EMA started at a resume, and the CLI average of a real run's last 3 checkpoints against numpy."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from cpt_jax import cli, tree_io
from cpt_jax import configure

OVERRIDES = [
    "--config.model.hidden_size=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
    "--config.train.steps=8", "--config.train.batch_size=4", "--config.train.seq_len=16",
    "--config.train.eval_every=4", "--config.train.eval_batches=1", "--config.train.log_every=4",
    "--config.train.progress=false", "--config.logging.tensorboard=false",
    "--config.checkpoint.every=2", "--config.checkpoint.keep=0", "--config.checkpoint.async_save=false",
    "--config.optim.peak_lr=3e-3",
    "--config.lawa.k=3", "--config.lawa.every=2", "--config.lawa.ema=0.9",
]
TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")


class Data:
    """The configured pipeline's batches by step, sending SIGTERM when step ``kill_at`` is fetched."""

    def __init__(self, cfg, kill_at=None):
        from cpt_jax.data.pipeline import TrainData

        self.inner, self.kill_at = TrainData.from_config(cfg), kill_at
        self.domains = self.inner.domains

    def batch(self, step):
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop finishes this step, saves, returns
        return self.inner.batch(step)


def train(run_dir, kill_at=None):
    from cpt_jax.train import loop

    cfg = configure.load(TINY, OVERRIDES + [f"--config.run_dir={run_dir}"])
    return loop.run(cfg, data=Data(cfg, kill_at))


def eval_lines(run_dir):
    lines = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {r["step"]: r for r in lines if any(k.startswith("eval/") for k in r)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lawa_train")
    a, b = str(root / "straight"), str(root / "resumed")
    train(a)
    first = train(b, kill_at=4)  # stops after step 5 (mid-interval: window [2, 4])
    assert first["interrupted"] == "SIGTERM" and first["steps"] == 5
    second = train(b)
    assert second["resumed_from"] == 5 and second["steps"] == 8
    return a, b


def test_online_average_after_resume_equals_uninterrupted(runs):
    from cpt_jax.train.checkpoint import RunCheckpoints

    a, b = runs
    ea, eb = eval_lines(a), eval_lines(b)
    assert not any(k.startswith("eval_lawa/") for k in ea[4])  # window [2, 4] not yet full
    assert any(k.startswith("eval_ema/") for k in ea[4])
    keys = [k for k in ea[8] if k.startswith(("eval_lawa/", "eval_ema/"))]
    assert "eval_lawa/avg/loss" in keys and "eval_ema/avg/loss" in keys
    for k in keys:
        np.testing.assert_allclose(eb[8][k], ea[8][k], rtol=1e-6)
    cfg = configure.load(TINY, OVERRIDES)
    sa = RunCheckpoints(a, cfg.checkpoint).restore_host_item(8, "lawa")
    sb = RunCheckpoints(b, cfg.checkpoint).restore_host_item(8, "lawa")
    assert list(sa["steps"]) == list(sb["steps"]) == [4, 6, 8]
    fa, fb = tree_io.flatten(sa), tree_io.flatten(sb)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])
    # the EMA is part of the train state: its checkpoint item continues bit for bit
    ema_a = RunCheckpoints(a, cfg.checkpoint).restore_host_item(8, "ema")
    ema_b = RunCheckpoints(b, cfg.checkpoint).restore_host_item(8, "ema")
    assert int(ema_a["count"]) == int(ema_b["count"]) == 8
    fa, fb = tree_io.flatten(ema_a["params"]), tree_io.flatten(ema_b["params"])
    assert fa.keys() == fb.keys() and all(v.dtype == np.float32 for v in fa.values())
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])


def test_a_checkpoint_that_kept_the_ema_in_its_lawa_item_continues_it(runs, tmp_path):
    """Checkpoints written before the EMA joined the train state kept it in the ``lawa`` item."""
    import shutil

    import orbax.checkpoint as ocp

    from cpt_jax.train.checkpoint import RunCheckpoints

    a, _ = runs
    old = tmp_path / "old"
    shutil.copytree(a, old)
    (old / "summary.json").unlink()
    for step in (6, 8):
        shutil.rmtree(old / "checkpoints" / str(step))
    step4 = old / "checkpoints" / "4"
    ckpts = RunCheckpoints(str(old), configure.load(TINY, OVERRIDES).checkpoint)
    lawa, ema = ckpts.restore_host_item(4, "lawa"), ckpts.restore_host_item(4, "ema")
    shutil.rmtree(step4 / "lawa")
    shutil.rmtree(step4 / "ema")
    with ocp.StandardCheckpointer() as ckptr:  # the former layout: {steps, snapshots, ema}
        ckptr.save(step4 / "lawa", {**lawa, "ema": ema["params"]})
    assert train(str(old))["resumed_from"] == 4
    cfg = configure.load(TINY, OVERRIDES)
    got = RunCheckpoints(str(old), cfg.checkpoint).restore_host_item(8, "ema")
    want = RunCheckpoints(a, cfg.checkpoint).restore_host_item(8, "ema")
    assert int(got["count"]) == 8  # taken as the step (4), then 4 updates
    fa, fb = tree_io.flatten(got["params"]), tree_io.flatten(want["params"])
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])


def test_an_ema_switched_on_at_a_resume_starts_from_the_first_params_after_it(tmp_path):
    from cpt_jax.train import loop
    from cpt_jax.train.checkpoint import RunCheckpoints

    run = str(tmp_path / "run")
    plain = ["--config.lawa.k=0", "--config.lawa.ema=0.0", "--config.checkpoint.every=1",
             "--config.train.eval_every=0", f"--config.run_dir={run}"]
    loop.run(configure.load(TINY, OVERRIDES + plain + ["--config.train.steps=5"]))
    assert not (tmp_path / "run" / "checkpoints" / "5" / "ema").exists()
    cfg = configure.load(TINY, OVERRIDES + plain + ["--config.lawa.ema=0.5"])
    assert loop.run(cfg)["resumed_from"] == 5
    ckpts = RunCheckpoints(run, cfg.checkpoint)
    ema = ckpts.restore_host_item(8, "ema")
    assert int(ema["count"]) == 3  # steps 6, 7, 8
    thetas = [tree_io.flatten(ckpts.restore_host_item(s, "params")) for s in (6, 7, 8)]
    want = {k: np.asarray(v, np.float64) for k, v in thetas[0].items()}  # theta_6, then the recursion
    for theta in thetas[1:]:
        want = {k: 0.5 * want[k] + 0.5 * np.asarray(theta[k], np.float64) for k in want}
    got = tree_io.flatten(ema["params"])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_cli_average_of_a_trained_run_equals_numpy_and_online_window(runs, tmp_path):
    import orbax.checkpoint as ocp

    from cpt_jax.train.checkpoint import RunCheckpoints

    a, _ = runs
    out = str(tmp_path / "avg")
    assert cli.main(["average", "--run", a, "--last", "3", "--out", out]) == 0
    with ocp.StandardCheckpointer() as ckptr:
        got = tree_io.flatten(ckptr.restore(os.path.join(out, "params")))
        ck = [tree_io.flatten(ckptr.restore(os.path.join(a, "checkpoints", str(s), "params"))) for s in (4, 6, 8)]
    online = RunCheckpoints(a, configure.load(TINY, OVERRIDES).checkpoint).restore_host_item(8, "lawa")
    snaps = [tree_io.flatten(online["snapshots"][f"step_{s}"]) for s in (4, 6, 8)]
    for k in got:
        want = np.mean(np.stack([np.asarray(c[k], np.float64) for c in ck]), axis=0)
        np.testing.assert_allclose(np.asarray(got[k]), want, rtol=1e-6, atol=1e-7)
        for c, snap in zip(ck, snaps):  # the online snapshots are the checkpointed params
            np.testing.assert_array_equal(np.asarray(c[k]), snap[k])
