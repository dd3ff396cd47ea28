"""The one-line warning when train.seq_len grows past the init model's trained context while the
rotary base (and position interpolation) stay as they were."""

import json

import pytest

from cpt_jax import config as C
from cpt_jax import configure
from cpt_jax.model import context


def write(path, name, value):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(value))
    return path


def params_checkpoint(path, model):
    """The entries that make a params checkpoint (model.json and a params item)."""
    (path / "params").mkdir(parents=True)
    return write(path, "model.json", model)


def cfg(init_from, seq_len, base=10000.0, scaling=1.0, max_pos=8192):
    c = C.defaults()
    c.train.init_from = str(init_from)
    c.train.seq_len = seq_len
    c.model.rotary_emb_base = base
    c.model.rope_scaling = scaling
    c.model.max_position_embeddings = max_pos
    return c


def test_params_checkpoint_grown_context_warns_once(tmp_path, capsys):
    ckpt = params_checkpoint(tmp_path / "pythia",
                             {"max_position_embeddings": 2048, "rotary_emb_base": 10000.0, "rope_scaling": 1.0})
    configure.validate(cfg(ckpt, 4096))
    configure.validate(cfg(ckpt, 4096))  # derived configs validate again: still one line
    err = capsys.readouterr().err
    assert err == (f"warning: train.seq_len 4096 is longer than the 2048 tokens {ckpt} was trained "
                   "on, with the same rotary base 10000; raise model.rotary_emb_base (e.g. 500000, "
                   "Fu et al. 2024) or set model.rope_scaling (docs/long_context.md)\n")
    for quiet in (cfg(ckpt, 2048), cfg(ckpt, 4096, base=500000.0), cfg(ckpt, 4096, scaling=2.0),
                  cfg("", 4096)):
        configure.validate(quiet)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("sub", ["", "checkpoints/40"])
def test_run_and_step_dirs_use_the_runs_seq_len(tmp_path, sub):
    run = write(tmp_path / "run", "model.json", {"max_position_embeddings": 2048,
                                                 "rotary_emb_base": 10000.0, "rope_scaling": 1.0})
    write(run, "config.json", {"train": {"seq_len": 64}})
    (run / "checkpoints" / "40" / "params").mkdir(parents=True)
    assert context.source_of(str(run / sub)) == context.Source(64, 10000.0, 1.0)
    msg = context.rope_warning(cfg(run, 128).model, 128, str(run / sub))
    assert msg.startswith("warning: train.seq_len 128 is longer than the 64 tokens")
    assert context.rope_warning(cfg(run, 64).model, 64, str(run / sub)) is None


def test_hugging_face_dir_spellings(tmp_path):
    hf = write(tmp_path / "hf", "config.json",
               {"model_type": "gpt_neox", "max_position_embeddings": 2048, "rope_theta": 10000})
    assert context.source_of(str(hf)) == context.Source(2048, 10000.0, 1.0)
    lin = write(tmp_path / "hf2", "config.json", {"max_position_embeddings": 2048,
                                                  "rotary_emb_base": 10000,
                                                  "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert context.source_of(str(lin)) == context.Source(4096, 10000.0, 2.0)  # 2048 x 2
    assert context.rope_warning(cfg(lin, 4096, scaling=2.0).model, 4096, str(lin)) is None
    assert context.rope_warning(cfg(lin, 8192, scaling=2.0).model, 8192, str(lin)) is not None
    assert context.source_of(str(tmp_path / "missing")) is None
