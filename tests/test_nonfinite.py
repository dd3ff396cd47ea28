"""Non-finite steps: the jitted step never applies them, checkpoints stay finite,
``optim.skip_nonfinite`` skips a bounded number of bad batches."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax import sharding
from cpt_jax.errors import UserError
from cpt_jax.model import pythia
from cpt_jax.optim import make_optimizer
from cpt_jax.run_dir import RunDir
from cpt_jax.schedules import make_schedule
from cpt_jax.train import checkpoint, loop
from cpt_jax.train.state import TrainState, state_shardings
from cpt_jax.train.step import NextTokenObjective, make_train_step
from train_worker import load_cfg


class NanAt(NextTokenObjective):
    """Next-token loss, NaN on the steps in ``bad`` (counted in extras)."""

    def __init__(self, mcfg, k, bad):
        super().__init__(mcfg, k)
        self.bad = jnp.asarray(sorted(bad), jnp.int32)

    def init_extras(self, params):
        return {"calls": jnp.zeros((), jnp.int32)}

    def prepare(self, params, batch, extras):
        count, _, m = super().prepare(params, batch, extras)
        calls = extras["calls"] + 1
        return (count, calls), {"calls": calls}, m

    def loss(self, params, micro_batch, ctx):
        count, calls = ctx
        value, aux = super().loss(params, micro_batch, count)
        return value * jnp.where(jnp.any(self.bad == calls), jnp.nan, 1.0), aux


def _leaves_finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))


def test_a_nonfinite_step_keeps_params_and_optimizer_state(tmp_path):
    cfg = load_cfg(str(tmp_path), [])
    mesh = sharding.make_mesh(cfg.mesh)
    mcfg = pythia.PythiaConfig.from_config(cfg.model)
    schedule = make_schedule(cfg.schedule, cfg.optim.peak_lr, cfg.train.steps)
    tx = make_optimizer(cfg.optim, schedule)
    obj = NanAt(mcfg, 3, bad=[2])
    params = pythia.init_params(mcfg, jax.random.key(0))
    state = TrainState(jnp.int32(0), params, tx.init(params), obj.init_extras(params))
    shard = state_shardings(state, mesh)
    step = make_train_step(obj, tx, schedule, shard, mesh)
    rng = np.random.RandomState(0)
    batch = sharding.global_batch(
        {"tokens": rng.randint(0, mcfg.vocab_size, (8, 33)).astype(np.int32),
         "domain": np.zeros(8, np.int32)}, mesh, 8)
    s1, m1 = step(jax.device_put(state, shard), batch)
    before = jax.device_get((s1.params, s1.opt_state))
    s2, m2 = step(s1, batch)
    after = jax.device_get((s2.params, s2.opt_state))
    assert float(m1["nonfinite"]) == 0.0 and float(m2["nonfinite"]) == 1.0
    assert np.isnan(float(m2["loss"])) and int(s2.step) == 2
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(s2.extras["calls"]) == 1  # the bad step's extras are not kept either
    # the first step did move the params (the guard is not a no-op)
    init = jax.device_get(pythia.init_params(mcfg, jax.random.key(0)))
    assert not np.array_equal(np.asarray(jax.tree.leaves(before[0])[0]), np.asarray(jax.tree.leaves(init)[0]))


def test_diverging_run_stops_with_only_finite_checkpoints(tmp_path):
    # peak_lr 1e6: step 2's update makes the loss explode, step 3's update would be non-finite
    cfg = load_cfg(str(tmp_path), ["train.steps=12", "optim.peak_lr=1e6", "checkpoint.every=1",
                                   "checkpoint.keep=10", "checkpoint.async_save=false"])
    with pytest.raises(UserError, match=r"not finite at step 3: training stopped \(last good checkpoint: step 2\)"):
        loop.run(cfg, eval_sets={})
    steps = RunDir(tmp_path).complete_steps()
    assert steps == [1, 2]
    for s in steps:
        params = checkpoint.restore_params(tmp_path / "checkpoints" / str(s), None)
        assert _leaves_finite(params), f"step {s}"


BAD = 99  # a domain id that marks a poisoned batch


class NanOnMarkedBatch(NextTokenObjective):
    """Next-token loss, NaN for a batch holding a row of domain ``BAD``."""

    def loss(self, params, micro_batch, ctx):
        value, aux = super().loss(params, micro_batch, ctx)
        return value * jnp.where(jnp.any(micro_batch["domain"] == BAD), jnp.nan, 1.0), aux


class Poisoned:
    """The configured data with batches of the (1-based) steps ``bad`` marked."""

    def __init__(self, data, bad):
        self.data, self.bad, self.domains = data, set(bad), data.domains

    def batch(self, step):
        out = dict(self.data.batch(step))
        if step + 1 in self.bad:
            out["domain"] = np.full_like(np.asarray(out["domain"]), BAD)
        return out


def test_skip_nonfinite_skips_up_to_n_then_stops(tmp_path, capsys):
    cfg = load_cfg(str(tmp_path / "a"), ["train.steps=8", "optim.skip_nonfinite=2"])
    mcfg = pythia.PythiaConfig.from_config(cfg.model)
    obj = NanOnMarkedBatch(mcfg, 3)
    summary = loop.run(cfg, objective=obj, data=Poisoned(loop._train_data(cfg), [3, 5]), eval_sets={})
    assert summary["steps"] == 8
    err = capsys.readouterr().err
    assert "loss is nan at step 3: batch skipped without an update (1 of optim.skip_nonfinite=2)" in err
    assert "loss is nan at step 5: batch skipped without an update (2 of optim.skip_nonfinite=2)" in err
    recs = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 4, 6, 7, 8]  # skipped steps log no loss
    assert [r.get("train/skipped_steps", 0) for r in train] == [0, 0, 1, 2, 2, 2]
    assert all(np.isfinite(r["train/loss"]) for r in train)
    cfg = load_cfg(str(tmp_path / "b"), ["train.steps=8", "optim.skip_nonfinite=1"])
    with pytest.raises(UserError, match=r"loss is nan at step 5: .*1 batches skipped before"):
        loop.run(cfg, objective=obj, data=Poisoned(loop._train_data(cfg), [3, 5]), eval_sets={})
