"""Multi-run experiments and sweeps, with a stand-in for the training loop."""

import csv
import json
import textwrap
from pathlib import Path

import pytest

from cpt_jax import config as config_lib
from cpt_jax import configure
from cpt_jax import experiment, sweep
from cpt_jax.errors import UserError
from cpt_jax.model import pythia

ROOT = Path(__file__).resolve().parents[1]


def fake_trainer(losses_by_run: dict[str, dict[str, float]], calls: list[str]):
    """Writes what a finished run leaves behind: config.json and summary.json."""

    def run(cfg):
        name = Path(cfg.run_dir).name
        calls.append(name)
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run_dir) / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
        eval_ = {d: {"loss": v} for d, v in losses_by_run[name].items()}
        summary = {"final_eval": eval_, "steps": cfg.train.steps, "interrupted": None}
        (Path(cfg.run_dir) / "summary.json").write_text(json.dumps(summary))
        return summary

    return run


def test_demo_experiment_runs_continue_from_pretrain(tmp_path):
    shared, runs = experiment.load_experiment(str(ROOT / "configs/demo.py"),
                                              [f"--config.run_dir={tmp_path}"])
    assert [r["name"] for r in runs][0] == "pretrain"
    for run in runs[1:]:
        cfg = experiment.run_config(shared, run, tmp_path)
        assert cfg.train.init_from == str(tmp_path / "pretrain")
        assert cfg.run_dir == str(tmp_path / run["name"])
    replay = experiment.run_config(shared, runs[-1], tmp_path)
    assert replay.data.replay_fraction == pytest.approx(0.1)


def test_run_skip_and_learning_forgetting(tmp_path):
    shared, runs = experiment.load_experiment(str(ROOT / "configs/demo.py"),
                                              [f"--config.run_dir={tmp_path}"])
    runs = runs[:3]
    losses = {"pretrain": {"books": 4.0, "legal": 3.0, "code_python": 6.0},
              "constant": {"books": 4.2, "legal": 3.2, "code_python": 5.0},
              "rewarm_half": {"books": 4.6, "legal": 3.4, "code_python": 4.5}}
    calls: list[str] = []
    summaries = experiment.run_experiment(shared, runs, fake_trainer(losses, calls), log=lambda s: None)
    assert calls == ["pretrain", "constant", "rewarm_half"]
    experiment.run_experiment(shared, runs, fake_trainer(losses, calls), log=lambda s: None)
    assert calls == ["pretrain", "constant", "rewarm_half"]  # all finished: skipped
    rows = experiment.learning_forgetting(summaries, runs, ["books", "legal"], ["code_python"])
    assert [r["run"] for r in rows] == ["constant", "rewarm_half"]
    assert rows[0]["forgetting"] == pytest.approx((4.2 + 3.2) / 2 - 3.5)
    assert rows[1]["learning"] == pytest.approx(6.0 - 4.5)
    assert "| rewarm_half | 3.500 -> 4.000 | +0.500 |" in experiment.format_table(rows)


def test_changed_config_reruns(tmp_path):
    shared, runs = experiment.load_experiment(str(ROOT / "configs/demo.py"),
                                              [f"--config.run_dir={tmp_path}"])
    calls: list[str] = []
    trainer = fake_trainer({"pretrain": {"books": 1.0}}, calls)
    experiment.run_experiment(shared, runs[:1], trainer, log=lambda s: None)
    changed = [{"name": "pretrain", "set": {"train.steps": 7}}]
    experiment.run_experiment(shared, changed, trainer, log=lambda s: None)
    assert calls == ["pretrain", "pretrain"]
    saved = json.loads((tmp_path / "pretrain" / "config.json").read_text())
    del saved["train"]["log_every"]  # as if written before cpt-jax had this key
    (tmp_path / "pretrain" / "config.json").write_text(json.dumps(saved))
    experiment.run_experiment(shared, changed, trainer, log=lambda s: None)
    assert calls == ["pretrain", "pretrain"]


def test_bad_runs_are_one_line_errors(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent("""
        from cpt_jax.config import base
        def get_config():
            return base()
        def get_runs(c):
            return [{"name": "a", "from": "b"}]
    """))
    with pytest.raises(UserError, match="continues from 'b', which is not an earlier run"):
        experiment.load_experiment(str(path))
    shared = configure.load(str(ROOT / "configs/tiny.py"))
    with pytest.raises(UserError, match="unknown config key 'optim.peak'"):
        experiment.run_config(shared, {"name": "x", "set": {"optim.peak": 1.0}}, tmp_path)


def test_experiment_file_is_executed_once(tmp_path):
    """The shared config and the runs come from one execution of the file (it may have effects)."""
    counter = tmp_path / "executions.txt"
    path = tmp_path / "once.py"
    path.write_text(textwrap.dedent(f"""
        from cpt_jax.config import base
        with open({str(counter)!r}, "a") as f:
            f.write("x")
        def get_config():
            return base()
        def get_runs(c):
            return [{{"name": "a"}}]
    """))
    experiment.load_experiment(str(path))
    assert counter.read_text() == "x"


SWEEP = """
from cpt_jax.config import base
def get_config():
    c = base()
    c.run_dir = {run_dir!r}
    c.train.steps = 10
    c.train.batch_size = 4
    c.train.seq_len = 16
    c.data.upstream = "noise,trivial"
    c.data.downstream = "pattern"
    return c
def get_grid(c):
    return {{"d": [32, 64], "r": [0.25, 0.5]}}
def apply(p):
    return {{"model.hidden_size": p["d"], "train.steps": 10 * p["d"] // 32,
            "data.weights": f"pattern={{p['r']}},noise={{1 - p['r']}}"}}
def base_run(p):
    return {{"name": f"base_d{{p['d']}}", "set": {{"model.hidden_size": p["d"]}}}}
"""


def test_sweep_grid_csv_and_commands(tmp_path):
    path = tmp_path / "sweep.py"
    path.write_text(SWEEP.format(run_dir=str(tmp_path / "runs")))
    shared, runs = sweep.load_sweep(str(path))
    assert [r["name"] for r in runs] == ["base_d32", "base_d64", "d32_r0.25", "d32_r0.5",
                                         "d64_r0.25", "d64_r0.5"]
    assert runs[4]["from"] == "base_d64"
    losses = {r["name"]: {"noise": 5.0 + i, "trivial": 1.0, "pattern": 2.0 - 0.1 * i}
              for i, r in enumerate(runs)}
    calls: list[str] = []
    out = sweep.run_sweep(shared, runs, fake_trainer(losses, calls))
    assert calls == [r["name"] for r in runs]
    rows = list(csv.DictReader(open(out)))
    assert [r["run"] for r in rows] == [r["name"] for r in runs]
    assert [int(r["D"]) for r in rows[:2]] == [0, 0]  # the bases: pre-CPT rows
    assert float(rows[1]["general_loss"]) == pytest.approx((6.0 + 1.0) / 2)
    big = rows[4]
    cfg = experiment.run_config(shared, runs[4], shared.run_dir)
    assert cfg.train.init_from == str(tmp_path / "runs" / "base_d64")
    assert int(big["N"]) == pythia.count_params(pythia.PythiaConfig.from_config(cfg.model))
    assert int(big["D"]) == 20 * 4 * 16
    assert float(big["r"]) == 0.25
    assert float(big["general_loss"]) == pytest.approx((9.0 + 1.0) / 2)
    assert float(big["domain_loss"]) == pytest.approx(1.6)
    lines = sweep.commands(str(path), [], shared, runs)
    assert len(lines) == 6 and "--config.model.hidden_size=64" in lines[5]
    assert f"--config.run_dir={tmp_path / 'runs' / 'd64_r0.5'}" in lines[5]
    assert f"--config.train.init_from={tmp_path / 'runs' / 'base_d64'}" in lines[5]
