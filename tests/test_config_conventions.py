"""ml-collections' command-line conventions, key suggestions, and model.from_checkpoint."""

import textwrap

import jax
import pytest

from cpt_jax import cli
from cpt_jax import config as config_lib
from cpt_jax import configure
from cpt_jax.errors import UserError
from cpt_jax.model import checkpoint, pythia


def _file(tmp_path, body):
    f = tmp_path / "exp.py"
    f.write_text(textwrap.dedent(body))
    return f


def test_config_string_argument_reaches_get_config(tmp_path):
    f = _file(tmp_path, """
        from cpt_jax.config import base

        def get_config(arg=None):
            c = base()
            c.train.steps = int(arg) if arg else 7
            return c
        """)
    assert configure.load(f"{f}:42").train.steps == 42
    assert configure.load(str(f)).train.steps == 7
    assert config_lib.split_spec(f"{f}:42") == (str(f), "42")
    assert config_lib.split_spec("nowhere.py:1") == ("nowhere.py:1", None)


def test_space_separated_overrides_and_negative_values():
    argv = ["train", "--config", "c.py", "--config.optim.peak_lr", "6e-4",
            "--config.schedule.warmup_steps", "-1", "--config.train.steps=5"]
    assert cli.join_overrides(argv) == ["train", "--config", "c.py", "--config.optim.peak_lr=6e-4",
                                        "--config.schedule.warmup_steps=-1", "--config.train.steps=5"]


def test_cli_end_to_end_with_both_conventions(tmp_path, capsys):
    f = _file(tmp_path, """
        from cpt_jax.config import base

        def get_config(size):
            c = base()
            c.model.hidden_size = int(size)
            return c
        """)
    assert cli.main(["info", f"--config={f}:128", "--config.model.num_layers", "3"]) == 0
    out = capsys.readouterr().out
    reference = pythia.PythiaConfig.from_config(
        configure.load(f"{f}:128", ["--config.model.num_layers=3"]).model)
    assert reference.hidden_size == 128 and reference.num_layers == 3
    assert "L=3 d=128 " in out and f"params={pythia.count_params(reference):,}" in out


def test_typo_suggests_the_nearest_key():
    cfg = config_lib.defaults()
    with pytest.raises(UserError, match=r"unknown config key 'optim.peak_lrr' \(did you mean 'optim.peak_lr'\?\)"):
        config_lib.apply_overrides(cfg, ["--config.optim.peak_lrr=1"])
    with pytest.raises(UserError, match=r"did you mean 'train.steps'"):
        config_lib.apply_overrides(cfg, ["--config.trian.steps=1"])


def test_model_from_checkpoint_takes_the_shape(tmp_path):
    src = pythia.PythiaConfig(vocab_size=96, hidden_size=48, num_layers=3, num_heads=6,
                              intermediate_size=100, rotary_pct=0.5, rotary_emb_base=500.0,
                              use_parallel_residual=False, max_position_embeddings=128)
    params = pythia.init_params(src, jax.random.key(0))
    checkpoint.save_params(tmp_path / "ck", params, src)
    cfg = config_lib.defaults()
    with cfg.unlocked():
        cfg.model.from_checkpoint = "train.init_from"
        cfg.train.init_from = str(tmp_path / "ck")
        cfg.model.max_position_embeddings = 4096  # a long-context change is kept
    configure.model_from_checkpoint(cfg)
    got = pythia.PythiaConfig.from_config(cfg.model)
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "rotary_pct", "rotary_emb_base", "use_parallel_residual"):
        assert getattr(got, name) == getattr(src, name), name
    assert got.max_position_embeddings == 4096 and cfg.model.from_checkpoint == ""
    configure.validate(cfg)
    bad = config_lib.defaults()
    with bad.unlocked():
        bad.model.from_checkpoint = str(tmp_path / "ck")
        bad.model.hidden_size = 32
    with pytest.raises(UserError, match="model.hidden_size is 32 in the config but 48"):
        configure.model_from_checkpoint(bad)
