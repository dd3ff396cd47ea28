"""The train step and loop on one CPU device: gradient accumulation, objectives with extras,
non-finite losses, metrics, the MFU convention."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax import sharding
from cpt_jax.errors import UserError
from cpt_jax.run_dir import RunDir
from cpt_jax.model import pythia
from cpt_jax.optim import make_optimizer
from cpt_jax.schedules import make_schedule
from cpt_jax.train import checkpoint, loop
from cpt_jax.train.metrics import flops_per_token
from cpt_jax.train.state import TrainState, ema_params, init_ema, state_shardings
from cpt_jax.train.step import NextTokenObjective, accumulate, make_train_step
from train_worker import load_cfg



def _setup(cfg):
    mesh = sharding.make_mesh(cfg.mesh)
    mcfg = pythia.PythiaConfig.from_config(cfg.model)
    tx = make_optimizer(cfg.optim, make_schedule(cfg.schedule, cfg.optim.peak_lr, cfg.train.steps))
    params = pythia.init_params(mcfg, jax.random.key(0))
    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), extras={})
    shard = state_shardings(state, mesh)
    return mesh, mcfg, tx, jax.device_put(state, shard), shard


def test_four_micro_batches_equal_one_batch(tmp_path):
    cfg = load_cfg(str(tmp_path), ["train.batch_size=8"])
    mesh, mcfg, tx, state, shard = _setup(cfg)
    rng = np.random.RandomState(0)
    batch = {"tokens": rng.randint(0, mcfg.vocab_size, (8, cfg.train.seq_len + 1)).astype(np.int32),
             "domain": rng.randint(0, 3, 8).astype(np.int32)}
    schedule = make_schedule(cfg.schedule, cfg.optim.peak_lr, cfg.train.steps)
    obj = NextTokenObjective(mcfg, 3)
    gbatch = sharding.global_batch(batch, mesh, 8)
    step = make_train_step(obj, tx, schedule, shard, mesh, 4)
    _, metrics4 = step(jax.device_put(jax.tree.map(jnp.copy, state), shard), gbatch)
    ctx = jnp.float32(8 * cfg.train.seq_len)
    acc = {m: jax.device_get(jax.jit(lambda p, b, m=m: accumulate(obj, p, b, ctx, m, mesh))(state.params, gbatch))
           for m in (1, 4)}
    # independent: per-token CE from the model's logits in numpy, and its gradient norm
    logits = np.asarray(pythia.forward(state.params, batch["tokens"][:, :-1], mcfg), np.float64)
    tgt = batch["tokens"][:, 1:]
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce = lse - np.take_along_axis(logits, tgt[..., None], -1)[..., 0]
    grads = jax.grad(lambda p: jnp.mean(
        jax.nn.logsumexp(pythia.forward(p, batch["tokens"][:, :-1], mcfg), -1)
        - jnp.take_along_axis(pythia.forward(p, batch["tokens"][:, :-1], mcfg), tgt[..., None], -1)[..., 0]
    ))(state.params)
    gnorm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(grads)))
    for loss, aux, _ in acc.values():
        np.testing.assert_allclose(loss, ce.mean(), rtol=1e-5)
        for d in range(3):
            sel = batch["domain"] == d
            np.testing.assert_allclose(aux["domain_loss_sum"][d], ce[sel].sum(), rtol=1e-5)
            assert aux["domain_tokens"][d] == sel.sum() * cfg.train.seq_len
    for path, a in jax.tree_util.tree_flatten_with_path(acc[4][2])[0]:  # 4 micro-batches vs 1
        b = dict(jax.tree_util.tree_flatten_with_path(acc[1][2])[0])[path]
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale, err_msg=str(path))
    for path, a in jax.tree_util.tree_flatten_with_path(grads)[0]:  # jax.grad of the plain mean
        b = dict(jax.tree_util.tree_flatten_with_path(acc[4][2])[0])[path]
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * np.abs(a).max(), err_msg=str(path))
    np.testing.assert_allclose(metrics4["loss"], ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics4["grad_norm"], gnorm, rtol=1e-4)
    np.testing.assert_allclose(metrics4["lr"], float(schedule(0)), rtol=1e-6)


def test_the_steps_ema_starts_at_the_first_params_and_follows_the_recursion(tmp_path):
    cfg = load_cfg(str(tmp_path), ["train.batch_size=4"])
    mesh, mcfg, tx, state, _ = _setup(cfg)
    state = state.replace(ema=init_ema(state.params))
    shard = state_shardings(state, mesh)
    state = jax.device_put(state, shard)
    schedule = make_schedule(cfg.schedule, cfg.optim.peak_lr, cfg.train.steps)
    step = make_train_step(NextTokenObjective(mcfg, 3), tx, schedule, shard, mesh, ema_beta=0.75)
    assert ema_params(state) is None  # no update yet: nothing to evaluate
    rng, want = np.random.RandomState(1), None
    for _ in range(4):
        batch = {"tokens": rng.randint(0, mcfg.vocab_size, (4, cfg.train.seq_len + 1)).astype(np.int32),
                 "domain": rng.randint(0, 3, 4).astype(np.int32)}
        state, _ = step(state, sharding.global_batch(batch, mesh, 4))
        theta = {k: np.asarray(v, np.float64) for k, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}
        # independent: theta_ema = theta_1, then 0.75 theta_ema + 0.25 theta_t
        want = theta if want is None else {k: 0.75 * want[k] + 0.25 * theta[k] for k in theta}
    assert int(state.ema["count"]) == 4
    got = dict(jax.tree_util.tree_flatten_with_path(ema_params(state))[0])
    for k, w in want.items():
        assert got[k].dtype == dict(jax.tree_util.tree_flatten_with_path(state.params)[0])[k].dtype
        np.testing.assert_allclose(np.asarray(got[k], np.float64), w, rtol=1e-5, atol=1e-6, err_msg=str(k))


class NanAfter(NextTokenObjective):
    """Counts steps in ``extras``; the loss turns NaN after ``k`` steps."""

    def __init__(self, mcfg, domains, k):
        super().__init__(mcfg, domains)
        self.k = k

    def init_extras(self, params):
        return {"calls": jnp.zeros((), jnp.int32)}

    def prepare(self, params, batch, extras):
        ctx, _, metrics = super().prepare(params, batch, extras)
        calls = extras["calls"] + 1
        return (ctx, calls), {"calls": calls}, metrics

    def loss(self, params, micro_batch, ctx):
        count, calls = ctx
        value, aux = super().loss(params, micro_batch, count)
        return value * jnp.where(calls > self.k, jnp.nan, 1.0), aux


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = load_cfg(str(tmp_path), ["train.steps=12", "checkpoint.every=5", "logging.tensorboard=true"])
    mcfg = pythia.PythiaConfig.from_config(cfg.model)
    with pytest.raises(UserError, match=r"loss is nan at step 8: training stopped \(last good checkpoint: step 5\)"):
        loop.run(cfg, objective=NanAfter(mcfg, 3, k=7), eval_sets={})
    assert RunDir(tmp_path).latest_step() == 5
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # step 7 was logged before step 8's loss was seen
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and b"train/loss" in events[0].read_bytes()
    # the checkpoint holds the objective's extras (5 steps counted) and resumes from them
    _, _, _, state, _ = _setup(cfg)
    ck = checkpoint.RunCheckpoints(tmp_path, cfg.checkpoint)
    restored, meta = ck.restore(5, state.replace(extras={"calls": jnp.zeros((), jnp.int32)}))
    ck.close()
    assert int(restored.extras["calls"]) == 5 and meta["step"] == 5 and int(restored.step) == 5
    for shardings in (None, state_shardings(state, sharding.make_mesh(cfg.mesh)).params):
        alone = checkpoint.restore_params(tmp_path / "checkpoints" / "5", shardings)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(restored.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("preset,tok_s,mfu", [("410m", 127.1e3, 0.35), ("1.4b", 47.7e3, 0.44)])
def test_mfu_convention_reproduces_reference_numbers(preset, tok_s, mfu):
    """Measured figures (docs/benchmarks.md): 410m at 127.1k tok/s is 35% MFU, 1.4b at 47.7k is 44% (H100)."""
    mcfg = pythia.PythiaConfig.from_config({"preset": preset})
    f = flops_per_token(mcfg, 2048, pythia.count_params(mcfg))
    n_matmul = pythia.count_params(mcfg) - mcfg.vocab_size * mcfg.hidden_size
    assert f == 6 * n_matmul + 12 * mcfg.num_layers * 2048 * mcfg.hidden_size
    assert abs(tok_s * f / 989e12 - mfu) < 0.006
    assert math.isclose(f, 6 * n_matmul + 12 * mcfg.num_layers * 2048 * mcfg.hidden_size)


@pytest.mark.parametrize("kind,tflops", [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA A100-SXM4-80GB", 312),
                                         ("NVIDIA L40S", 362), ("TPU v5 lite", 197), ("TPU v5", 459),
                                         ("cpu", None)])
def test_peak_flops_by_device_kind(kind, tflops):
    from cpt_jax.train.metrics import peak_flops

    device = type("Device", (), {"device_kind": kind})()
    assert peak_flops(device) == (tflops * 1e12 if tflops else None)


def _logged(run_dir, key):
    lines = [json.loads(x) for x in open(f"{run_dir}/metrics.jsonl")]
    return {r["step"]: r[key] for r in lines if key in r}


def test_vocab_chunked_loss_trains_identically_and_continuation_evaluates_its_start(tmp_path):
    full, chunked, cont = (str(tmp_path / n) for n in ("full", "chunked", "cont"))
    loop.run(load_cfg(full, ["train.steps=3"]))
    loop.run(load_cfg(chunked, ["train.steps=3", "train.vocab_chunk=8"]))
    a, b = _logged(full, "train/loss"), _logged(chunked, "train/loss")
    assert list(a) == [1, 2, 3]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
    # a continuation logs the held-out loss of the weights it starts from at step 0
    loop.run(load_cfg(cont, ["train.steps=2", "train.eval_every=1", f"train.init_from={full}"]))
    start = {k: v for k, v in json.loads(open(f"{cont}/metrics.jsonl").readline()).items()}
    final = json.loads(open(f"{full}/summary.json").read())["final_eval"]
    assert start["step"] == 0
    for domain, res in final.items():
        assert start[f"eval/{domain}/loss"] == pytest.approx(res["loss"], rel=1e-6)


def test_checkpoint_past_the_configured_steps_is_a_clear_error(tmp_path):
    loop.run(load_cfg(str(tmp_path), ["train.steps=3"]))
    with pytest.raises(UserError, match="checkpoint at step 3, past train.steps = 2"):
        loop.run(load_cfg(str(tmp_path), ["train.steps=2"]))


def test_train_only_new_rows_moves_nothing_else(tmp_path):
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "vocab.json").write_text(json.dumps({"new_rows": [5, 7]}))
    cfg = load_cfg(str(tmp_path / "run"), ["train.steps=2", f"train.train_only_new_rows={ext}"])
    loop.run(cfg)
    after = checkpoint.restore_params(tmp_path / "run" / "checkpoints" / "2")
    before = pythia.init_params(pythia.PythiaConfig.from_config(cfg.model), jax.random.key(cfg.seed))
    for path, a in jax.tree_util.tree_leaves_with_path(after):  # eager vs jitted init: ~3e-8
        b = np.asarray(dict(jax.tree_util.tree_leaves_with_path(before))[path])
        change = np.abs(np.asarray(a) - b)
        if path[0].key in ("embed_in", "embed_out"):
            moved = np.flatnonzero(change.max(axis=1) > 1e-6)
            assert moved.tolist() == [5, 7] and change.max() > 1e-4, path
        else:
            assert change.max() < 1e-6, path


def test_eval_steps_add_evals_where_listed_and_bad_lists_are_one_line(tmp_path):
    base = str(tmp_path / "base")
    loop.run(load_cfg(base, ["train.steps=2"]))
    cont = str(tmp_path / "cont")
    loop.run(load_cfg(cont, ["train.steps=6", "train.eval_every=4", "train.eval_steps=1,2",
                             f"train.init_from={base}"]))
    evals = sorted(_logged(cont, "eval/avg/loss"))
    assert evals == [0, 1, 2, 4, 6]  # step 0 (a continuation), the listed steps, every 4, the end
    with pytest.raises(UserError, match="train.eval_steps must be comma-separated"):
        load_cfg(cont, ["train.eval_steps=1;2"])
    with pytest.raises(UserError, match="step 9 is outside 1..train.steps"):
        load_cfg(cont, ["train.steps=6", "train.eval_steps=9"])
