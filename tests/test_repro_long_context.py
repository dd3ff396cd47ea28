"""The long-context part's pieces against hand computations: the NTK base, the bands, and
held-out windows cut from the start of long documents."""

import importlib.util
from pathlib import Path

import numpy as np

from cpt_jax.data.indexed import IndexedDatasetWriter
from cpt_jax.data.manifest import update_manifest
from experiments.repro import long_context as lc

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
    m, se = lc.mean_se(np.array([1.0, 3.0]))
    assert m == 2.0 and abs(se - np.sqrt(2.0) / np.sqrt(2)) < 1e-12


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
