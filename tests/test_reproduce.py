"""The reproduction pipeline at its tiny size: every part trains, judges and reports, and a
second run of a part trains nothing."""

from __future__ import annotations

import json
import math

import pytest

import repro_data
from cpt_jax.cli import main
from experiments.repro import PARTS
from experiments.repro.common import VERDICTS, Section


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return repro_data.build(tmp_path_factory.mktemp("repro"))


def _reproduce(tmp, data, parts):
    return main(["reproduce", "--size", "tiny", "--parts", parts, "--data", str(data),
                 "--runs", str(tmp / "runs"), "--out", str(tmp / "repro.md"),
                 "--images", str(tmp / "images")])


def _finite(x):
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


@pytest.mark.parametrize("part", PARTS)
def test_part_runs_judges_and_reports(part, data_dir, tmp_path):
    assert _reproduce(tmp_path, data_dir, part) == 0
    section = Section.load(tmp_path / "runs" / part)
    assert section is not None and section.verdict in VERDICTS
    assert section.table.startswith("|") and section.why
    assert section.images and all((tmp_path / "images").joinpath(p.split("/")[-1]).is_file()
                                  for p in section.images)
    doc = (tmp_path / "repro.md").read_text()
    assert f"## {section.title}" in doc and f"**Verdict: {section.verdict}.**" in doc
    assert "**The designs**" in doc and "**The model.**" in doc
    json.dumps(section.numbers)  # the record is plain JSON
    # run again: every run is finished, nothing trains
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("summary.json")}
    assert _reproduce(tmp_path, data_dir, part) == 0
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("summary.json")}
    assert before == after and before


def test_unknown_part_and_missing_data_are_one_line(tmp_path, capsys):
    assert main(["reproduce", "--parts", "rewarm,nope", "--data", str(tmp_path)]) == 2
    assert "unknown part 'nope'" in capsys.readouterr().err
    assert main(["reproduce", "--parts", "rewarm", "--data", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_without_a_checkout_says_what_to_do_in_one_line(tmp_path, monkeypatch, capsys):
    import cpt_jax
    from cpt_jax.commands import reproduce

    monkeypatch.setattr(cpt_jax, "__file__", str(tmp_path / "site-packages" / "cpt_jax" / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert reproduce.NO_CHECKOUT in err and "\n" not in err


def test_reproduce_trains_on_the_corpus_retokenized_with_its_bpe(data_dir, tmp_path, monkeypatch):
    """With a BPE size set, the parts see the re-tokenized copy of --data, and the compilation
    cache is on while they run and off after."""
    import shutil

    import jax

    from experiments.repro import rewarm, settings

    data = tmp_path / "ten"
    shutil.copytree(data_dir, data)
    monkeypatch.setitem(settings.BPE_VOCAB, "tiny", 300)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    seen = {}

    def fake_run(ctx):
        seen["data"], seen["cache"] = ctx.data_dir, jax.config.values["jax_compilation_cache_dir"]
        return Section(part="rewarm", title="t", claim="c", source="s", setting="x", table="|",
                       verdict=VERDICTS[0], why="w")

    monkeypatch.setattr(rewarm, "run", fake_run)
    before = jax.config.values["jax_compilation_cache_dir"]
    assert _reproduce(tmp_path, data, "rewarm") == 0
    assert seen["data"] == f"{data}_bpe300"
    assert json.loads((tmp_path / "ten_bpe300" / "manifest.json").read_text())["tokenizer"]["vocab_size"] == 300
    assert seen["cache"] == str(tmp_path / "runs" / "jax_cache")
    assert jax.config.values["jax_compilation_cache_dir"] == before
