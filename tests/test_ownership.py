"""Who may write where: convert, average and vocab extend never write into a run directory or
over files another verb made (unless --force), and a run whose `checkpoints` is not a folder
stops in one line before touching anything."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from cpt_jax.cli import main
from cpt_jax.errors import UserError
from cpt_jax.model import checkpoint, pythia
from conftest import tree_digest

MCFG = pythia.PythiaConfig.from_config({"vocab_size": 64, "hidden_size": 16, "num_layers": 1, "num_heads": 2})


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "ckpt"
    checkpoint.save_params(path, jax.device_get(pythia.init_params(MCFG, jax.random.key(0))), MCFG)
    return path


def fake_run(root: Path) -> Path:
    """What a training run leaves: its config, metrics and a checkpoints folder."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": 0, "train": {"steps": 4}}))
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 3.0}\n')
    return run


def cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--to", "--to-hf"])
def test_convert_into_a_run_dir_is_refused_and_changes_nothing(flag, src, tmp_path, capsys):
    run = fake_run(tmp_path)
    before = tree_digest(run)
    code, err = cli(["convert", "--from", str(src), flag, str(run)], capsys)
    assert code == 2 and "is a training run directory" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    assert tree_digest(run) == before


def test_convert_over_foreign_files_needs_force_and_over_its_own_output_not(src, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "gpt_neox"}')  # a downloaded model, say
    before = tree_digest(out)
    code, err = cli(["convert", "--from", str(src), "--to-hf", str(out)], capsys)
    assert code == 2 and "not written by convert" in err and "config.json" in err
    assert tree_digest(out) == before
    assert cli(["convert", "--from", str(src), "--to-hf", str(out), "--force"], capsys)[0] == 0
    assert json.loads((out / "config.json").read_text())["num_attention_heads"] == 2
    assert cli(["convert", "--from", str(src), "--to", str(tmp_path / "ck")], capsys)[0] == 0
    assert cli(["convert", "--from", str(src), "--to", str(tmp_path / "ck")], capsys)[0] == 0  # its own
    before = tree_digest(tmp_path / "ck")
    code, err = cli(["average", "--ckpt", str(src), "--out", str(tmp_path / "ck")], capsys)
    assert code == 2 and "written by convert" in err
    assert tree_digest(tmp_path / "ck") == before


def test_average_and_vocab_extend_refuse_a_run_dir(src, tmp_path, capsys):
    run = fake_run(tmp_path)
    before = tree_digest(run)
    code, err = cli(["average", "--ckpt", str(src), "--out", str(run)], capsys)
    assert code == 2 and "is a training run directory" in err
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n")
    code, err = cli(["vocab", "extend", "--corpus", str(corpus), "--new-tokens", "2",
                     "--checkpoint", str(src), "--out", str(run)], capsys)
    assert code == 2 and "is a training run directory" in err
    assert tree_digest(run) == before


def test_checkpoints_entry_that_is_not_a_folder_is_one_line(tmp_path):
    from train_worker import load_cfg

    from cpt_jax.train import loop

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("not a folder")
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 3.0}\n')
    before = tree_digest(run)
    with pytest.raises(UserError, match="checkpoints is not a folder"):
        loop.run(load_cfg(str(run), ["train.steps=2"]), eval_sets={})
    assert tree_digest(run) == before  # the lease is gone again, metrics kept
