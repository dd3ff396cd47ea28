"""Checkpoint integrity: digests recorded at save and checked wherever a checkpoint is read, the
run's record inside each step, `cpt-jax verify`, damaged records, and numbers that cannot be
right (non-finite weights, overflowing casts)."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from train_worker import load_cfg

from cpt_jax import integrity
from cpt_jax.cli import main
from cpt_jax.errors import UserError
from cpt_jax.model import checkpoint, pythia
from cpt_jax.run_dir import RunDir
from cpt_jax.train import loop
from conftest import tree_digest

COMMON = ["checkpoint.every=2", "checkpoint.keep=0", "checkpoint.async_save=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    loop.run(load_cfg(str(run), ["train.steps=4", *COMMON]), eval_sets={})
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def alter_one_value(item: Path) -> None:
    """Rewrite a params item with one element changed: a well-formed item, wrong content."""
    import orbax.checkpoint as ocp

    params = checkpoint.restore_params_item(item)
    params = jax.tree.map(np.asarray, params)
    params["embed_in"] = params["embed_in"].copy()
    params["embed_in"][3, 5] += 1.0
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(item, params, force=True)
    ckptr.wait_until_finished()
    ckptr.close()


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_digest_is_the_same_from_numpy_and_jax_and_sees_one_changed_bit():
    import ml_dtypes

    rng = np.random.RandomState(0)
    tree = {"a": rng.randn(33, 7).astype(np.float32), "b": {"c": rng.randn(5).astype(ml_dtypes.bfloat16)},
            "n": np.int32(7), "h": rng.randn(4, 4).astype(np.float16), "bad": np.array([1.0, np.inf], np.float32)}
    host, nonfinite = integrity.tree_digest(tree)
    assert integrity.tree_digest(jax.tree.map(jax.numpy.asarray, tree)) == (host, nonfinite)
    assert nonfinite == {"a": 0, "b/c": 0, "n": 0, "h": 0, "bad": 1}
    flipped = tree["a"].copy()
    flipped.reshape(-1).view(np.uint8)[101] ^= 0x01
    assert integrity.array_digest_np(flipped)[0] != host["a"]


def test_altered_step_falls_back_on_resume_and_is_refused_by_every_reader(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    alter_one_value(run / "checkpoints" / "4" / "params")
    step4 = str(run / "checkpoints" / "4")
    for argv in (["eval", "--checkpoint", step4, "--tasks", "none", "--domains", "none"],
                 ["convert", "--from", step4, "--to", str(tmp_path / "out")],
                 ["average", "--run", str(run), "--last", "2", "--out", str(tmp_path / "avg")]):
        code, _, err = cli(argv, capsys)
        assert code == 2 and "step 4" in err and "fails its integrity check" in err, (argv, err)
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "avg").exists()
    code, out, _ = cli(["verify", str(run)], capsys)
    assert code == 1
    assert "step 2" in out and "ok" in out.splitlines()[0]
    assert "FAILED" in out.splitlines()[1] and "params/embed_in fails its integrity check" in out
    cfg = load_cfg(str(run), ["train.steps=6", *COMMON])
    with pytest.raises(UserError, match="train.init_from .*fails its integrity check|fails its integrity check"):
        loop.run(load_cfg(str(tmp_path / "other"), ["train.steps=2", f"train.init_from={step4}"]), eval_sets={})
    capsys.readouterr()
    summary = loop.run(cfg, eval_sets={})
    err = capsys.readouterr().err
    assert "checkpoint step 4 cannot be restored" in err and "integrity" in err and "resuming from step 2" in err
    assert summary["resumed_from"] == 2 and (run / "checkpoints" / "4.unreadable" / "params").is_dir()
    assert cli(["verify", str(run)], capsys)[0] == 0


def test_resume_checks_the_step_record_when_config_json_is_gone_or_damaged(trained, tmp_path, capsys):
    for damage in ("missing", "not an object", "not JSON"):
        run = copy_run(trained, tmp_path / damage.replace(" ", "_"))
        (run / "summary.json").unlink()
        if damage == "missing":
            (run / "config.json").unlink()
        else:
            (run / "config.json").write_text("[1, 2]" if damage == "not an object" else "{oops")
        before = tree_digest(run)
        with pytest.raises(UserError, match=r"seed: 0 -> 5"):
            loop.run(load_cfg(str(run), ["train.steps=6", "seed=5", *COMMON]), eval_sets={})
        assert tree_digest(run) == before
    capsys.readouterr()
    assert loop.run(load_cfg(str(run), ["train.steps=6", *COMMON]), eval_sets={})["steps"] == 6
    assert "kept as config.json.damaged" in capsys.readouterr().err
    assert (run / "config.json.damaged").read_text() == "{oops"


def test_finished_run_without_checkpoints_is_recognised_and_force_trains_it_again(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    before = tree_digest(run)
    cfg = load_cfg(str(run), ["train.steps=4", *COMMON])
    with pytest.raises(UserError, match="finished at step 4 earlier .*train --force"):
        loop.run(cfg, eval_sets={})
    assert tree_digest(run) == before
    cfg.train.force = True
    assert loop.run(cfg, eval_sets={})["steps"] == 4 and RunDir(run).latest_step() == 4


def test_empty_newest_step_is_moved_aside_and_saved_again(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    (run / "summary.json").unlink()
    (run / "checkpoints" / "6").mkdir()  # what a kill while orbax created the step leaves
    capsys.readouterr()
    summary = loop.run(load_cfg(str(run), ["train.steps=6", *COMMON]), eval_sets={})
    err = capsys.readouterr().err
    assert "checkpoint step 6 is empty or incomplete: moved to 6.incomplete" in err
    assert summary["steps"] == 6 and RunDir(run).latest_step() == 6
    assert (run / "checkpoints" / "6.incomplete").is_dir()


MCFG = pythia.PythiaConfig.from_config({"vocab_size": 64, "hidden_size": 16, "num_layers": 1, "num_heads": 2})


def test_nonfinite_weights_are_refused_unless_allowed(tmp_path, capsys):
    params = jax.device_get(pythia.init_params(MCFG, jax.random.key(0)))
    params["final_ln"]["scale"] = np.asarray(params["final_ln"]["scale"]).copy()
    params["final_ln"]["scale"][0] = np.nan
    checkpoint.save_params(tmp_path / "nan", params, MCFG)
    for argv in (["eval", "--checkpoint", str(tmp_path / "nan"), "--tasks", "none"],
                 ["average", "--ckpt", str(tmp_path / "nan"), "--out", str(tmp_path / "avg")],
                 ["convert", "--from", str(tmp_path / "nan"), "--to-hf", str(tmp_path / "hf")]):
        code, _, err = cli(argv, capsys)
        assert code == 2 and "final_ln/scale holds 1 non-finite values" in err and "--allow-nonfinite" in err
    assert not (tmp_path / "avg").exists() and not (tmp_path / "hf").exists()
    code, _, err = cli(["convert", "--from", str(tmp_path / "nan"), "--to", str(tmp_path / "ok"),
                        "--allow-nonfinite"], capsys)
    assert code == 0, err


def test_overflowing_cast_names_the_tensor(tmp_path, capsys):
    params = jax.device_get(pythia.init_params(MCFG, jax.random.key(0)))
    params["embed_out"] = np.asarray(params["embed_out"]).copy()
    params["embed_out"][1, 2] = 1e6
    checkpoint.save_params(tmp_path / "big", params, MCFG)
    code, _, err = cli(["convert", "--from", str(tmp_path / "big"), "--to", str(tmp_path / "h"),
                        "--dtype", "float16"], capsys)
    assert code == 2 and "casting parameter embed_out to float16 overflows" in err and "1e+06" in err
    assert not (tmp_path / "h").exists()
    assert cli(["convert", "--from", str(tmp_path / "big"), "--to", str(tmp_path / "b"),
                "--dtype", "bfloat16"], capsys)[0] == 0
    assert cli(["verify", str(tmp_path / "b")], capsys)[1].count(": ok,") == 1


def test_damaged_metrics_lines_are_kept_aside_and_the_resume_goes_on(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    (run / "summary.json").unlink()
    good = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text('{oops\n' + good + '{"step": "two", "x": 1}\n[1]\n')
    capsys.readouterr()
    summary = loop.run(load_cfg(str(run), ["train.steps=6", *COMMON]), eval_sets={})
    assert summary["steps"] == 6
    assert "3 line(s) of" in capsys.readouterr().err
    assert (run / "metrics.jsonl.bad").read_text() == '{oops\n{"step": "two", "x": 1}\n[1]\n'
    assert [r["step"] for r in RunDir(run).read_metrics()] == list(range(1, 7))


def test_verify_reads_every_item_a_leaf_group_at_a_time(trained, monkeypatch):
    """The optimizer state (lists and tuples of dicts) as well as params: no restore holds more
    than the largest array's bytes, and the arrays are those of reading the item whole."""
    import orbax.checkpoint as ocp

    from cpt_jax import verify

    step = trained / "checkpoints" / "4"
    whole = {item: dict(verify.iter_arrays(step / item, whole=True)) for item in ("params", "opt_state")}
    largest = max(x.nbytes for arrays in whole.values() for x in arrays.values())
    held: list[int] = []
    restore = ocp.Checkpointer.restore

    def spy(self, *args, **kwargs):
        out = restore(self, *args, **kwargs)
        held.append(sum(x.nbytes for x in jax.tree.leaves(out) if isinstance(x, np.ndarray)))
        return out

    monkeypatch.setattr(ocp.Checkpointer, "restore", spy)
    for item, expected in whole.items():
        held.clear()
        got = dict(verify.iter_arrays(step / item))
        assert got.keys() == expected.keys() and len(held) > 1
        for name, x in expected.items():
            np.testing.assert_array_equal(got[name], x)
        assert max(held) <= largest < sum(held)
    assert any(name.count("/") > 2 for name in whole["opt_state"])  # nested, not a flat dict
    assert verify.verify_step(RunDir(trained), 4).startswith("checkpoint step 4 (")
