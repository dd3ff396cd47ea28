"""Params-only orbax checkpoints: round trip, run/step directories, clear errors."""

import dataclasses
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cpt_jax.errors import UserError
from cpt_jax.model import checkpoint, pythia
from cpt_jax.model.pythia import PythiaConfig

CFG = PythiaConfig(vocab_size=67, hidden_size=16, num_layers=2, num_heads=2, rotary_pct=0.5,
                   use_parallel_residual=False, param_dtype="bfloat16")


def _assert_same(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [k for k, _ in fa] == [k for k, _ in fb]
    for (k, x), (_, y) in zip(fa, fb):
        assert x.dtype == y.dtype, k
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_values_dtypes_and_config(tmp_path):
    params = pythia.init_params(CFG, jax.random.key(0))
    checkpoint.save_params(tmp_path / "ck", params, CFG)
    assert json.loads((tmp_path / "ck" / "model.json").read_text())["use_parallel_residual"] is False
    loaded, cfg = checkpoint.load_params(tmp_path / "ck")
    assert cfg == CFG
    _assert_same(params, loaded)
    # saving again over the same directory replaces it
    params2 = jax.tree.map(lambda x: x + 1, params)
    checkpoint.save_params(tmp_path / "ck", params2, CFG)
    _assert_same(params2, checkpoint.load_params(tmp_path / "ck")[0])


def test_kill_between_params_swap_and_model_json_keeps_a_matching_pair(tmp_path, monkeypatch):
    """A kill after the new params took the old ones' place but before the top-level model.json
    is replaced, while the shape changes: readers still get the new params with their config."""
    path = tmp_path / "ck"
    checkpoint.save_params(path, pythia.init_params(CFG, jax.random.key(0)), CFG)
    wider = dataclasses.replace(CFG, hidden_size=24, num_heads=3)
    new = pythia.init_params(wider, jax.random.key(1))
    real_replace = checkpoint.os.replace

    def killed(src, dst):
        if str(dst) == str(path / "model.json"):
            raise KeyboardInterrupt("killed")  # the process dies here
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_params(path, new, wider)
    monkeypatch.undo()
    assert json.loads((path / "model.json").read_text())["hidden_size"] == 16  # the stale top-level file
    loaded, cfg = checkpoint.load_params(path)
    assert cfg == wider
    _assert_same(new, loaded)


def _write_run(run, params_by_step):
    run.mkdir()
    (run / "model.json").write_text(json.dumps(dataclasses.asdict(CFG)))
    mgr = ocp.CheckpointManager(run / "checkpoints", item_names=("params", "meta"))
    for step, params in params_by_step.items():
        mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                               meta=ocp.args.JsonSave({"step": step})))
    mgr.wait_until_finished()
    mgr.close()


def test_run_dir_gives_latest_step_and_step_dir_gives_that_step(tmp_path):
    base = pythia.init_params(CFG, jax.random.key(1))
    by_step = {s: jax.tree.map(lambda x, s=s: x * s, base) for s in (2, 7, 10)}
    _write_run(tmp_path / "run", by_step)
    # a half-written step (orbax temporary name) must be ignored
    (tmp_path / "run" / "checkpoints" / "99.orbax-checkpoint-tmp-1").mkdir()
    params, cfg = checkpoint.load_params(tmp_path / "run")
    assert cfg == CFG
    _assert_same(by_step[10], params)
    _assert_same(by_step[7], checkpoint.load_params(tmp_path / "run" / "checkpoints" / "7")[0])


def test_missing_and_corrupt_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load_params(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither"):
        checkpoint.load_params(tmp_path / "empty")
    params = pythia.init_params(CFG, jax.random.key(0))
    checkpoint.save_params(tmp_path / "ck", params, CFG)
    for f in (tmp_path / "ck" / "params").rglob("*"):
        if f.is_file() and "METADATA" not in f.name:
            f.write_bytes(b"garbage")
    with pytest.raises(UserError) as err:
        checkpoint.load_params(tmp_path / "ck")
    assert "ck" in str(err.value) and "\n" not in str(err.value)
    # model.json that disagrees with the stored shapes
    checkpoint.save_params(tmp_path / "ok", params, CFG)
    (tmp_path / "ok" / "model.json").write_text(json.dumps(dataclasses.asdict(
        dataclasses.replace(CFG, vocab_size=68))))
    with pytest.raises(UserError, match="embed_in"):
        checkpoint.load_params(tmp_path / "ok")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "model.json").write_text(json.dumps(dataclasses.asdict(CFG)))
    with pytest.raises(UserError, match="no complete checkpoint"):
        checkpoint.load_params(tmp_path / "run")
