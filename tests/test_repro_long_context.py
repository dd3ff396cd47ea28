"""The long-context part's pieces against hand computations: the NTK base, the bands, and
held-out windows cut from the start of long documents."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from cpt_jax.data.indexed import IndexedDatasetWriter
from cpt_jax.data.manifest import update_manifest
from experiments.repro import long_context as lc
from experiments.repro import stats

_spec = importlib.util.spec_from_file_location(
    "repro_long_context_config", Path(__file__).resolve().parents[1] / "configs" / "repro_long_context.py")
cfg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cfg)


def test_ntk_base():
    assert cfg.ntk_base(10000.0, 4, 4) == 160000.0  # 10000 * 4**(4/2)
    assert abs(cfg.ntk_base(10000.0, 16, 4) - 10000.0 * 4 ** (16 / 14)) < 1e-6
    assert cfg.ntk_base(10000.0, 2, 4) == 10000.0  # one frequency: the base has no effect


def test_bands_and_means():
    assert lc.bands(128) == {"0-127": (0, 128), "64-127": (64, 128), "128-255": (128, 256), "256-511": (256, 512)}
    losses = np.arange(24, dtype=float).reshape(2, 12)
    assert lc.band_means(losses, 2, 5).tolist() == [3.0, 15.0]


def test_heldout_windows_start_at_documents(tmp_path):
    docs = [np.arange(10, 10 + n) for n in (7, 3, 11)]  # windows of 3: 2, 1 and 3 of them
    with IndexedDatasetWriter(tmp_path / "a" / "val", np.uint16) as w:
        for d in docs:
            w.add_document(d)
    with IndexedDatasetWriter(tmp_path / "a" / "train", np.uint16) as w:
        w.add_document(docs[0])
    update_manifest(tmp_path, {"name": "t", "sha256": "0", "vocab_size": 100}, "a",
                    {"train": "a/train", "val": "a/val", "train_tokens": 7, "val_tokens": 21,
                     "train_documents": 1, "val_documents": 3, "license": "test", "sources": []})
    got = lc.heldout_windows(str(tmp_path), ["a"], 2, 4)
    # round-robin: every document's first window, then the second ones
    assert got.tolist() == [[10, 11, 12], [10, 11, 12], [10, 11, 12], [13, 14, 15]]


def _m(rng, pre_rise=1.0, control_beyond=0.5, long_beyond=0.0, seeds=3):
    """t = 4, 4t = 16 positions, 30 windows: losses 3 inside the context, + a rise beyond it."""
    def model(rise):
        x = np.full((30, 16), 3.0) + rng.normal(0, 0.05, (30, 16))
        x[:, 4:] += rise
        return x
    arms = {"long": {s: model(long_beyond + rng.normal(0, 0.01)) for s in range(seeds)},
            "control": {s: model(control_beyond + rng.normal(0, 0.01)) for s in range(seeds)}}
    return {"t": 4, "long_t": 16, "pretrained": model(pre_rise), "arms": arms}


def test_judge_pairs_seeds_and_needs_a_rise_to_repair():
    j = lc.judge(_m(np.random.default_rng(0)))
    assert j["verdict"] == stats.REPRODUCED
    assert j["tests"][0].p == pytest.approx(sps.ttest_rel(j["beyond"]["control"], j["beyond"]["long"]).pvalue)
    flat = lc.judge(_m(np.random.default_rng(1), pre_rise=0.0))
    assert flat["verdict"] == stats.CANNOT_TEST and "gets worse beyond T: NOT met" in flat["why"]
    worse = lc.judge(_m(np.random.default_rng(2), long_beyond=0.8))
    assert worse["verdict"] == stats.NOT_REPRODUCED
