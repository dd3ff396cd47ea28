"""`cpt-jax eval`: a params checkpoint, a user task file, synthetic-domain held-out loss."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from cpt_jax import cli
from cpt_jax import config as config_lib
from cpt_jax import configure
from cpt_jax.data.pipeline import Catalog, eval_sets
from cpt_jax.eval import multiple_choice as mc
from cpt_jax.eval import perplexity, tasks as tasks_lib
from cpt_jax.configure import config_from_json
from cpt_jax.model import checkpoint as ckpt_lib
from cpt_jax.model import pythia

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "flew", "to", "moon"]


def _word_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, "[UNK]": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return tok


def test_eval_command_writes_tasks_and_domains(tmp_path, capsys):
    cfg = config_lib.defaults()
    cfg.model.vocab_size, cfg.model.hidden_size, cfg.model.num_layers = 64, 16, 1
    cfg.train.seq_len, cfg.train.batch_size, cfg.train.eval_batches = 16, 2, 2
    cfg.data.synthetic_tokens = 4096
    cfg.data.upstream = cfg.data.domains.split(",")[0] if cfg.data.domains else ""
    configure.validate(cfg)
    (tmp_path / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
    mcfg = pythia.PythiaConfig.from_config(cfg.model)
    params = pythia.init_params(mcfg, jax.random.key(3))
    ckpt_lib.save_params(tmp_path / "ckpt", params, mcfg)
    tok = _word_tokenizer(tmp_path / "tokenizer.json")
    rows = [{"context": "the cat", "choices": [" sat on mat", " flew to moon"], "label": 0},
            {"context": "the dog", "choices": [" sat", " flew", " to moon"], "label": 2}]
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = tmp_path / "res.json"
    code = cli.main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--config", str(tmp_path / "config.json"),
                     "--tasks", str(tmp_path / "toy.jsonl"), "--tokenizer", str(tmp_path / "tokenizer.json"),
                     "--batch-size", "4", "--out", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "toy" in printed and "avg" in printed

    # the same numbers from the library, computed independently of the command
    task = tasks_lib.load_task(str(tmp_path / "toy.jsonl"))
    expect = mc.evaluate_tasks(params, mcfg, [task], tok, batch_size=2)["toy"]
    for key in ("acc", "acc_norm", "n", "chance"):
        assert res["tasks"]["toy"][key] == pytest.approx(expect[key])
    assert res["tasks"]["toy"]["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    saved = config_from_json(tmp_path / "config.json")
    domains = perplexity.evaluate(params, mcfg, eval_sets(saved.train, Catalog.from_config(saved)))
    assert set(res["domains"]) == set(domains)
    for d, r in domains.items():
        assert res["domains"][d]["loss"] == pytest.approx(r["loss"], rel=1e-6)
    assert res["summary"]["avg"]["loss"] == pytest.approx(np.mean([r["loss"] for r in domains.values()]))


def test_eval_command_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "missing"), "--tasks", "none"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(tmp_path), "--tasks", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err
