"""Online LAWA window against numpy, and its continuation through saved state."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax import config as config_lib
from cpt_jax import configure
from cpt_jax.lawa_online import OnlineLawa

SHAPES = {"a": (4, 3), "b": (5,)}


def trajectory(n, seed=0):
    """theta_1 .. theta_n: random params trees (as if from optimizer steps)."""
    rng = np.random.default_rng(seed)
    return {t: {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for t in range(1, n + 1)}


def feed(window, thetas, steps):
    for t in steps:
        window.after_step(t, {k: jnp.asarray(v) for k, v in thetas[t].items()})


@pytest.mark.parametrize("store", ["host", "disk"])
def test_window_mean_matches_numpy(store, tmp_path):
    thetas = trajectory(11)
    w = OnlineLawa(k=3, every=2, store=store, run_dir=str(tmp_path))
    feed(w, thetas, range(1, 6))
    assert w.steps == [2, 4] and not w.full
    like = {k: jnp.zeros(s) for k, s in SHAPES.items()}
    assert w.lawa_params(like) is None
    feed(w, thetas, range(6, 12))
    assert w.steps == [6, 8, 10] and w.full
    got = w.lawa_params(like)
    for k in SHAPES:
        want = np.mean([thetas[t][k].astype(np.float64) for t in (6, 8, 10)], axis=0)
        np.testing.assert_allclose(np.asarray(got[k]), want, rtol=1e-6, atol=1e-7)
    if store == "disk":  # only the window's snapshots stay on disk
        assert sorted(map(int, os.listdir(tmp_path / "lawa"))) == [6, 8, 10]


@pytest.mark.parametrize("store", ["host", "disk"])
def test_resume_from_state_continues_the_same_averages(store, tmp_path):
    thetas = trajectory(14, seed=1)
    like = {k: jnp.zeros(s) for k, s in SHAPES.items()}
    full = OnlineLawa(k=3, every=2, store=store, run_dir=str(tmp_path / "a"))
    feed(full, thetas, range(1, 15))

    first = OnlineLawa(k=3, every=2, store=store, run_dir=str(tmp_path / "b"))
    feed(first, thetas, range(1, 8))
    saved = first.state()
    feed(first, thetas, range(8, 12))  # the interrupted run goes on past its checkpoint ...
    resumed = OnlineLawa(k=3, every=2, store=store, run_dir=str(tmp_path / "b"))
    resumed.load_state(saved)  # ... and restarts from it
    assert resumed.steps == [2, 4, 6]
    feed(resumed, thetas, range(8, 15))
    assert resumed.steps == full.steps == [10, 12, 14]
    a, b = full.lawa_params(like), resumed.lawa_params(like)
    for k in SHAPES:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_config_section():
    cfg = config_lib.defaults()
    assert OnlineLawa.from_config(cfg.lawa, cfg.run_dir) is None
    cfg.lawa.ema = 0.9  # the EMA lives in the train state: no window for it
    assert OnlineLawa.from_config(cfg.lawa, cfg.run_dir) is None
    cfg.lawa.k, cfg.lawa.every = 5, 20
    configure.validate(cfg)
    w = OnlineLawa.from_config(cfg.lawa, cfg.run_dir)
    assert (w.k, w.every, w.store) == (5, 20, "host")
    cfg.lawa.store = "ram"
    with pytest.raises(config_lib.UserError, match="lawa.store 'ram' is not one of host, disk"):
        configure.validate(cfg)
