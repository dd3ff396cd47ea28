"""Optional dependencies fail in one line naming the extra to install."""

import sys

import pytest

from cpt_jax.data.readers import iter_documents
from cpt_jax.errors import UserError


def test_parquet_without_pyarrow_is_one_line(tmp_path, monkeypatch):
    f = tmp_path / "part.parquet"
    f.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UserError, match=r"needs pyarrow \(pip install 'cpt-jax\[parquet\]'\)"):
        list(iter_documents([f]))


def test_wandb_project_without_wandb_is_one_line(tmp_path, monkeypatch):
    from cpt_jax.train.metrics import start_wandb

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"pip install 'cpt-jax\[wandb\]'"):
        start_wandb("p", {}, tmp_path, str(tmp_path))
