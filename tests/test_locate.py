"""``run_dir.locate``: the one answer to "what is this path" that the checkpoint reader,
``cpt-jax eval``, LAWA and the context check share (gs:// paths: test_gcs_workflows.py)."""

from __future__ import annotations

import json

import pytest

from cpt_jax import run_dir
from cpt_jax.errors import UserError
from cpt_jax.eval import runner
from cpt_jax.model import checkpoint, context


def make(root, *folders, files=None):
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def layouts(tmp_path):
    """One folder of each kind, built from the entries the kinds are defined by."""
    return {
        "params": make(tmp_path / "params", "params", files={"model.json": "{}"}),
        "pointer": make(tmp_path / "pointer", "params.1a2b", files={"model.json": "{}",
                                                                    "params.current": "params.1a2b\n"}),
        "run": make(tmp_path / "run", "checkpoints/10/params", files={"config.json": "{}", "model.json": "{}"}),
        "hf": make(tmp_path / "hf", files={"config.json": json.dumps({"model_type": "gpt_neox"})}),
        "empty": make(tmp_path / "empty", "."),
    }


def test_each_kind(layouts):
    found = {name: run_dir.locate(path) for name, path in layouts.items()}
    assert {name: f and f.kind for name, f in found.items()} == {
        "params": "params", "pointer": "params", "run": "run", "hf": "hf", "empty": None}
    run = found["run"]
    assert run.run.root == run.path and run.step is None and run.model_root == run.path
    step = run_dir.locate(layouts["run"] / "checkpoints" / "10")
    assert (step.kind, step.step, step.run.root, step.model_root) == ("step", 10, run.path, run.path)
    assert found["params"].model_root == found["params"].path and found["hf"].model_root is None
    assert not any(f.remote for f in found.values() if f)
    assert run_dir.params_item(found["pointer"].path).name == "params.1a2b"


def test_what_is_none_of_the_kinds(layouts, tmp_path):
    (tmp_path / "file").write_text("x")
    assert run_dir.locate(tmp_path / "missing") is None
    assert run_dir.locate(tmp_path / "file") is None
    make(layouts["run"], "checkpoints/20")  # a step folder with no params item yet
    assert run_dir.locate(layouts["run"] / "checkpoints" / "20") is None
    bad = make(tmp_path / "bad", files={"model.json": "{}", "params.current": "../elsewhere"})
    with pytest.raises(UserError, match="does not name a params item"):
        run_dir.locate(bad)


def test_resolvers_agree(layouts, tmp_path):
    """The eval verb's run, the context check's source and the checkpoint reader's refusal all
    follow the same kinds."""
    step = layouts["run"] / "checkpoints" / "10"
    assert runner.run_of(layouts["run"]).root == runner.run_of(step).root
    assert runner.run_of(layouts["params"]) is None and runner.run_of(layouts["hf"]) is None
    model = {"max_position_embeddings": 1024, "rotary_emb_base": 10000.0, "rope_scaling": 2.0}
    (layouts["run"] / "model.json").write_text(json.dumps(model))
    (layouts["run"] / "config.json").write_text(json.dumps({"train": {"seq_len": 96}}))
    assert context.source_of(str(step)) == context.Source(96, 10000.0, 2.0)
    (layouts["params"] / "model.json").write_text(json.dumps(model))
    assert context.source_of(str(layouts["params"])) == context.Source(2048, 10000.0, 2.0)  # 1024 x 2
    assert context.source_of(str(layouts["empty"])) is None
    with pytest.raises(UserError, match="neither a params checkpoint"):
        checkpoint.locate(layouts["empty"])
    assert checkpoint.locate(layouts["hf"]) is None
