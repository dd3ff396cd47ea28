"""Run checkpoints: which steps are kept, half-written steps ignored, restore of every item."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cpt_jax.run_dir import RunDir
from cpt_jax.train import checkpoint
from cpt_jax.train.state import TrainState


def _state(step: int) -> TrainState:
    params = {"w": jnp.full((4, 2), float(step)), "b": jnp.arange(2.0) + step}
    opt = optax.adam(1e-3).init(params)
    return TrainState(step=jnp.int32(step), params=params, opt_state=opt, extras={})


def test_keep_last_and_listed_steps_and_skip_half_written(tmp_path):
    cfg = ml_collections.ConfigDict({"keep": 2, "keep_steps": "3", "async_save": True, "every": 1})
    run = RunDir(tmp_path)
    ck = checkpoint.RunCheckpoints(run, cfg)
    for step in range(1, 7):
        ck.save(_state(step), {"step": step, "data": {"step": step}})
    ck.wait()
    assert run.complete_steps() == [3, 5, 6]
    # a step orbax is still writing lives under a temporary name: never the latest
    (tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1234" / "params").mkdir(parents=True)
    assert run.latest_step() == 6
    restored, meta = ck.restore(5, _state(0))
    ck.close()
    assert {k: meta[k] for k in ("step", "data")} == {"step": 5, "data": {"step": 5}} and int(restored.step) == 5
    assert set(meta["digest"]) == {"params", "opt_state", "extras", "ema"} and "meta_digest" in meta
    np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.full((4, 2), 5.0))
    np.testing.assert_array_equal(np.asarray(restored.params["b"]), np.arange(2.0) + 5)
    assert restored.extras == {}
    assert RunDir(tmp_path / "nowhere").latest_step() is None


def _with_ema(step: int) -> TrainState:
    params = _state(step).params
    ema = {"params": {"w": params["w"] + 0.25, "b": params["b"] - 0.5}, "count": jnp.int32(step + 3)}
    return _state(step).replace(ema=ema)


def test_the_ema_item_round_trips_and_a_step_without_one_keeps_the_target(tmp_path):
    cfg = ml_collections.ConfigDict({"keep": 0, "keep_steps": "", "async_save": False, "every": 1})
    ck = checkpoint.RunCheckpoints(RunDir(tmp_path), cfg)
    ck.save(_with_ema(1), {"step": 1, "data": {"step": 1}})
    ck.save(_state(2), {"step": 2, "data": {"step": 2}})  # EMA off: no ema item
    ck.wait()
    assert (tmp_path / "checkpoints" / "1" / "ema").is_dir()
    assert not (tmp_path / "checkpoints" / "2" / "ema").exists()
    restored, meta = ck.restore(1, _with_ema(0))
    assert "ema" in meta["digest"]
    np.testing.assert_array_equal(np.asarray(restored.ema["params"]["w"]), np.full((4, 2), 1.25))
    np.testing.assert_array_equal(np.asarray(restored.ema["params"]["b"]), np.arange(2.0) + 0.5)
    assert int(restored.ema["count"]) == 4
    target = _with_ema(0)
    restored, _ = ck.restore(2, target)
    ck.close()
    assert restored.ema is target.ema  # nothing saved: the caller's fresh EMA stays
    np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.full((4, 2), 2.0))
