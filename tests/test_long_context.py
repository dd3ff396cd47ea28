"""Long-context continuation: T = 128 -> 512 with a raised rotary base, context validation,
chunked attention memory, and the long-document filter keeping each source's token share."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax import config as config_lib
from cpt_jax import configure
from cpt_jax import experiment, losses
from cpt_jax.data.indexed import IndexedDatasetWriter
from cpt_jax.data.manifest import update_manifest
from cpt_jax.data.pipeline import Catalog, TrainData, eval_sets
from cpt_jax.errors import UserError
from cpt_jax.model import attention, pythia
from cpt_jax.model.checkpoint import load_params

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/long_context.py")
PRETRAIN_STEPS = 150  # the continuation runs PRETRAIN_STEPS // 2 steps at T = 512


def position_losses(params: pythia.Params, batches: list[dict], mcfg: pythia.PythiaConfig) -> np.ndarray:
    """Per-position next-token loss ``[T]`` averaged over the rows of fixed held-out batches."""
    fn = jax.jit(lambda p, t: losses.next_token_losses(p, t, mcfg))
    rows = [np.asarray(fn(params, jnp.asarray(b["tokens"]))) for b in batches]
    return np.concatenate(rows).mean(0)


@pytest.fixture(scope="module")
def continued(tmp_path_factory):
    """Run configs/long_context.py (shortened; V = 128 and a constant LR so that 150 steps learn the
    pattern well enough to show the extrapolation gap): pretrain at T = 128, continue at T = 512."""
    root = tmp_path_factory.mktemp("long")
    overrides = [f"--config.run_dir={root}", f"--config.train.steps={PRETRAIN_STEPS}",
                 "--config.train.batch_size=8", "--config.train.eval_batches=1",
                 "--config.model.vocab_size=128", "--config.schedule.name=constant",
                 "--config.logging.tensorboard=false", "--config.train.progress=false",
                 "--config.data.synthetic_tokens=262144"]
    shared, runs = experiment.load_experiment(CONFIG, overrides)
    summaries = experiment.run_experiment(shared, runs, log=lambda _: None)
    long_cfg = experiment.run_config(shared, runs[1], root)
    return root, long_cfg, summaries


def test_continuation_at_512_lowers_the_loss_beyond_128(continued):
    root, long_cfg, summaries = continued
    assert summaries["long_512"]["steps"] == PRETRAIN_STEPS // 2
    short_params, short_mcfg = load_params(root / "pretrain_128")
    long_params, long_mcfg = load_params(root / "long_512")
    # the continued run records its longer context and raised base
    assert (short_mcfg.max_position_embeddings, short_mcfg.rotary_emb_base) == (128, 10000.0)
    assert (long_mcfg.max_position_embeddings, long_mcfg.rotary_emb_base) == (512, 160000.0)
    held_cfg = copy.deepcopy(long_cfg)
    held_cfg.train.eval_batches, held_cfg.train.batch_size = 8, 4
    # 32 fixed held-out T = 512 windows
    held = eval_sets(held_cfg.train, Catalog.from_config(held_cfg))["pattern"]
    assert sum(len(b["tokens"]) for b in held) == 32 and held[0]["tokens"].shape[1] == 513
    before = position_losses(short_params, held, long_mcfg)  # start of the continuation
    extrapolated = position_losses(short_params, held, short_mcfg)  # old base, no training
    after = position_losses(long_params, held, long_mcfg)
    near, far = slice(32, 128), slice(128, 512)
    print(f"\nloss at positions 32-127 / 128-511: extrapolated {extrapolated[near].mean():.3f} / "
          f"{extrapolated[far].mean():.3f}, raised base {before[near].mean():.3f} / "
          f"{before[far].mean():.3f}, continued {after[near].mean():.3f} / {after[far].mean():.3f}")
    # the pretrained model is worse beyond its training length ...
    assert before[far].mean() > before[near].mean() + 0.25
    assert extrapolated[far].mean() > extrapolated[near].mean() + 0.25
    # ... and the continuation at T = 512 lowers the loss there clearly, closing most of the gap
    assert after[far].mean() < before[far].mean() - 0.15
    assert after[far].mean() - after[near].mean() < 0.6 * (before[far].mean() - before[near].mean())


def test_context_validation_one_line_errors():
    cfg = config_lib.defaults()
    cfg.train.seq_len = 4096  # > max_position_embeddings 2048 without scaling
    with pytest.raises(UserError, match=r"train.seq_len 4096 exceeds the model context 2048") as err:
        configure.validate(cfg)
    assert "\n" not in str(err.value)
    cfg.model.rope_scaling = 2.0  # position interpolation: 2048 x 2 positions
    configure.validate(cfg)
    cfg.model.rope_scaling, cfg.model.max_position_embeddings = 1.0, 4096
    cfg.model.rotary_emb_base = 500000.0  # raised base with the longer stated context
    configure.validate(cfg)
    for key, value, message in (("rope_scaling", 0.5, "rope_scaling must be"),
                                ("rotary_emb_base", 0.0, "rotary_emb_base must be"),
                                ("max_position_embeddings", 0, "max_position_embeddings must be")):
        bad = config_lib.defaults()
        bad.model[key] = value
        with pytest.raises(UserError, match=message):
            configure.validate(bad)


def test_experiment_file_resolves_both_runs(tmp_path):
    shared, runs = experiment.load_experiment(CONFIG, [f"--config.run_dir={tmp_path}"])
    short = experiment.run_config(shared, runs[0], tmp_path)
    long = experiment.run_config(shared, runs[1], tmp_path)
    assert (short.train.seq_len, long.train.seq_len) == (128, 512)
    assert long.train.init_from == str(tmp_path / "pretrain_128")
    assert long.train.batch_size * 512 == short.train.batch_size * 128
    assert long.model.rotary_emb_base == 10000.0 * 4 ** (4 / (4 - 2))  # NTK-aware, r = 4
    assert long.data.long_threshold == 0  # synthetic data: no up-sampling
    _, corpus_runs = experiment.load_experiment(
        CONFIG, [f"--config.run_dir={tmp_path}", "--config.data.source=tokenized",
                 "--config.data.dir=data/demo"])
    assert corpus_runs[1]["set"]["data.long_threshold"] == 1024
    assert corpus_runs[1]["set"]["data.long_keep"] == 0.1


def test_auto_attention_is_chunked_for_long_sequences_off_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("auto picks cuDNN on GPU")
    assert attention.resolve("auto", 16, jnp.float32, 2048, 512) == "chunked"
    assert attention.resolve("auto", 16, jnp.float32, 512, 512) == "xla"


def test_chunked_attention_gradients_match_and_memory_is_not_quadratic():
    small = pythia.PythiaConfig(vocab_size=97, hidden_size=32, num_layers=4, num_heads=4)
    params = pythia.init_params(small, jax.random.key(1))
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 41)), jnp.int32)

    def grad_of(cfg: pythia.PythiaConfig):
        return jax.grad(lambda p, t: losses.next_token_losses(p, t, cfg).mean())

    g_xla = jax.jit(grad_of(dataclasses.replace(small, attention="xla")))(params, toks)
    g_chk = jax.jit(grad_of(dataclasses.replace(small, attention="chunked", attention_chunk=16)))(
        params, toks)
    for a, b in zip(jax.tree.leaves(g_xla), jax.tree.leaves(g_chk)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    t, heads, layers = 1024, 4, 4
    shapes = jax.eval_shape(lambda: pythia.init_params(small, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((1, t + 1), jnp.int32)
    temp = {}
    for impl in ("xla", "chunked"):
        cfg = dataclasses.replace(small, attention=impl, attention_chunk=128)
        stats = jax.jit(grad_of(cfg)).lower(shapes, tokens).compile().memory_analysis()
        if stats is None:
            pytest.skip("this backend reports no compiled memory statistics")
        temp[impl] = stats.temp_size_in_bytes
    scores = layers * heads * t * t * 4  # fp32 [L, B, H, T, T] that xla keeps for the backward pass
    assert temp["xla"] >= scores
    assert temp["chunked"] < scores / 2


def _write_domain(root: str, name: str, docs: list[np.ndarray]) -> None:
    entry = {"train": f"{name}/train", "val": f"{name}/val", "license": "test", "sources": []}
    for split, part in (("train", docs), ("val", docs[:8])):
        with IndexedDatasetWriter(os.path.join(root, name, split)) as w:
            for doc in part:
                w.add_document(doc)
        entry[f"{split}_tokens"] = int(sum(len(d) for d in part))
        entry[f"{split}_documents"] = len(part)
    update_manifest(root, {"name": "test", "sha256": "0" * 64, "vocab_size": 300}, name, entry)


def test_long_document_filter_keeps_long_documents_and_each_source_share(tmp_path):
    rng = np.random.default_rng(3)
    lengths = {"short": rng.integers(10, 120, 400), "mixed": rng.integers(10, 400, 150)}
    docs = {n: [rng.integers(1, 300, int(k)) for k in ls] for n, ls in lengths.items()}
    for name, ds in docs.items():
        _write_domain(str(tmp_path), name, ds)
    cfg = config_lib.defaults()
    cfg.data.source, cfg.data.dir = "tokenized", str(tmp_path)
    cfg.train.seq_len, cfg.train.batch_size = 32, 40
    cfg.data.long_threshold, cfg.data.long_keep = 100, 0.25
    configure.validate(cfg)
    td = TrainData.from_config(cfg)
    totals = {n: sum(len(d) for d in ds) for n, ds in docs.items()}
    share = np.array([totals[n] for n in td.domains], np.float64) / sum(totals.values())
    np.testing.assert_allclose(td.weights_at(0), share, rtol=1e-12)  # unfiltered token shares
    drawn = np.concatenate([td.batch(s)["domain"] for s in range(60)])
    np.testing.assert_allclose(np.bincount(drawn, minlength=2) / len(drawn), share, atol=0.03)
    for i, name in enumerate(td.domains):  # walk the filtered stream against the documents
        stream = td.sources[i].stream
        flat = stream.read(np.array([0]), stream.num_tokens)[0]
        pos, kept = 0, []
        for doc in docs[name]:
            hit = np.array_equal(flat[pos : pos + len(doc)], doc)
            kept.append(hit)
            pos += len(doc) if hit else 0
        assert pos == len(flat)  # the stream is exactly the kept documents, in order
        kept, ls = np.array(kept), lengths[name]
        assert kept[ls >= 100].all()  # every long document
        assert abs(kept[ls < 100].mean() - 0.25) < 0.08  # about p of the short ones
