"""TrainData / eval_sets over hand-written Megatron files and the synthetic source."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from cpt_jax.config import defaults
from cpt_jax.configure import validate
from cpt_jax.data.indexed import IndexedDatasetWriter
from cpt_jax.data.manifest import update_manifest
from cpt_jax.data.pipeline import Catalog, TrainData, eval_sets, process_rows
from cpt_jax.data.sources import FilteredStream, SyntheticStream, WindowSource, keep_documents
from cpt_jax.errors import UserError

T = 16
VOCAB = 500


def write_domain(root, name, docs_train, docs_val, tokenizer_vocab=VOCAB):
    """Write ``name``'s train/val .bin/.idx and its manifest entry; returns the train stream."""
    entry = {"train": f"{name}/train", "val": f"{name}/val", "license": "test", "sources": []}
    for split, docs in (("train", docs_train), ("val", docs_val)):
        with IndexedDatasetWriter(os.path.join(root, name, split)) as w:
            for doc in docs:
                w.add_document(doc)
        entry[f"{split}_tokens"] = int(sum(len(d) for d in docs))
        entry[f"{split}_documents"] = len(docs)
    tok = {"name": "test", "sha256": "0" * 64, "vocab_size": tokenizer_vocab}
    update_manifest(root, tok, name, entry)
    # independent view of the stream: the raw .bin as little-endian uint16
    return np.fromfile(os.path.join(root, name, "train.bin"), dtype="<u2").astype(np.int64)


def random_docs(rng, n, hi=VOCAB):
    docs = []
    for _ in range(n):
        doc = rng.integers(1, hi, size=int(rng.integers(3, 60)))
        doc[-1] = 0  # EOS
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    rng = np.random.default_rng(0)
    streams = {}
    for name, n in (("web", 60), ("code", 40), ("books", 30), ("old", 50)):
        streams[name] = write_domain(root, name, random_docs(rng, n), random_docs(rng, 12))
    return root, streams


def make_cfg(data_dir=None, **data):
    cfg = defaults()
    cfg.train.seq_len, cfg.train.batch_size, cfg.train.eval_batches = T, 8, 2
    if data_dir is not None:
        cfg.data.source, cfg.data.dir = "tokenized", data_dir
    for key, value in data.items():
        cfg.data[key] = value
    validate(cfg)
    return cfg


def window_ids(rows, stream):
    """Index w of the window stream[w*T : w*T+T+1] equal to each row (-1 if none)."""
    n = (len(stream) - 1) // T
    table = {stream[w * T : w * T + T + 1].tobytes(): w for w in range(n)}
    return [table.get(np.asarray(r, np.int64).tobytes(), -1) for r in rows]


def test_windows_are_pythia_slices_of_the_bin(data_dir):
    root, streams = data_dir
    td = TrainData.from_config(make_cfg(root))
    for i, name in enumerate(td.domains):
        s = streams[name]
        n = (len(s) - 1) // T
        assert len(td.sources[i]) == n
        got = td.sources[i].windows(np.arange(n))
        want = np.stack([s[w * T : w * T + T + 1] for w in range(n)])
        np.testing.assert_array_equal(got, want)


def test_batch_rows_are_windows_and_each_window_once_per_epoch(data_dir):
    root, streams = data_dir
    td = TrainData.from_config(make_cfg(root, domains="code"))
    n = len(td.sources[0])
    rows = np.concatenate([td.batch(k)["tokens"] for k in range(math.ceil(2 * n / 8))])
    ids = window_ids(rows, streams["code"])
    assert sorted(ids[:n]) == list(range(n))  # epoch 0: every window exactly once
    assert sorted(ids[n : 2 * n]) == list(range(n))  # epoch 1 as well,
    assert ids[:n] != ids[n : 2 * n]  # in a different order
    np.testing.assert_allclose(td.epochs_at(10), [80 / n])


def test_same_seed_same_batches_other_seed_differs(data_dir):
    root, _ = data_dir
    a, b = TrainData.from_config(make_cfg(root)), TrainData.from_config(make_cfg(root))
    for k in (0, 5, 77):
        assert all(np.array_equal(a.batch(k)[x], b.batch(k)[x]) for x in ("tokens", "domain"))
    cfg = make_cfg(root)
    cfg.seed = 1
    assert not np.array_equal(TrainData.from_config(cfg).batch(0)["tokens"], a.batch(0)["tokens"])


def test_mixture_fractions_through_the_pipeline(data_dir):
    root, _ = data_dir
    cfg = make_cfg(root, domains="web,code,books", weights="web=0.5,code=0.3,books=0.2")
    td = TrainData.from_config(cfg)
    w, n = np.array([0.5, 0.3, 0.2]), 8 * 1000
    doms = np.concatenate([td.plan.layout(k)[0] for k in range(1000)])
    assert np.all(np.abs(np.bincount(doms, minlength=3) - n * w) <= 3 * np.sqrt(n * w * (1 - w)))
    batch = td.batch(3)
    assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (8, T + 1)
    assert batch["domain"].dtype == np.int32 and batch["domain"].shape == (8,)
    np.testing.assert_array_equal(batch["domain"], td.plan.layout(3)[0])


def test_replay_and_phases_from_config(data_dir):
    root, _ = data_dir
    cfg = make_cfg(root, domains="web,code", weights="web=1", phases="30:web=0.5,code=0.5",
                   replay_domains="old", replay_fraction=0.25)
    td = TrainData.from_config(cfg)
    assert td.domains == ["web", "code", "old"]
    for k in range(25, 35):
        dom = td.batch(k)["domain"]
        assert (dom == 2).sum() == 2  # R = 0.25 x 8
        assert ((dom == 1).sum() > 0) == (k >= 30)
    np.testing.assert_allclose(td.weights_at(29), [0.75, 0, 0.25])
    np.testing.assert_allclose(td.weights_at(30), [0.375, 0.375, 0.25])


def test_iterator_resume_equals_uninterrupted_tail(data_dir):
    root, _ = data_dir
    td = TrainData.from_config(make_cfg(root))
    full = [b for _, b in zip(range(12), td.iterator(0))]
    tail = [b for _, b in zip(range(5), TrainData.from_config(make_cfg(root)).iterator(7))]
    for x, y in zip(full[7:], tail):
        assert np.array_equal(x["tokens"], y["tokens"]) and np.array_equal(x["domain"], y["domain"])
    state = td.state(7)
    assert TrainData.from_config(make_cfg(root)).resume_step(json.loads(json.dumps(state))) == 7
    with pytest.raises(UserError, match="domains"):
        TrainData.from_config(make_cfg(root, domains="web")).resume_step(state)


def test_two_processes_split_the_global_batch(data_dir):
    root, _ = data_dir
    cfg = make_cfg(root, replay_domains="old", replay_fraction=0.25)
    whole, p0, p1 = TrainData.from_config(cfg), TrainData.from_config(cfg, 0, 2), TrainData.from_config(cfg, 1, 2)
    for k in (0, 9):
        a, b, c = whole.batch(k), p0.batch(k), p1.batch(k)
        assert b["tokens"].shape == (4, T + 1)
        for key in ("tokens", "domain"):
            np.testing.assert_array_equal(np.concatenate([b[key], c[key]]), a[key])
    with pytest.raises(UserError, match="not divisible"):
        TrainData.from_config(cfg, 0, 3)


def test_any_rows_of_the_global_batch(data_dir):
    """A process loads exactly the rows its devices hold (e.g. every row when the tensor axis
    spans processes), each the same as in the whole batch."""
    cfg = make_cfg(data_dir[0], replay_domains="old", replay_fraction=0.25)
    whole, part = TrainData.from_config(cfg), TrainData.from_config(cfg, rows=np.array([1, 2, 6]))
    np.testing.assert_array_equal(process_rows(cfg), np.arange(8))
    for k in (0, 5):
        for key in ("tokens", "domain"):
            np.testing.assert_array_equal(part.batch(k)[key], whole.batch(k)[key][[1, 2, 6]])


def test_bad_domains_and_token_ids(data_dir, tmp_path):
    root, _ = data_dir
    with pytest.raises(UserError, match=r"domain 'nope' not in .*available: .*web") as err:
        TrainData.from_config(make_cfg(root, domains="web,nope"))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="replay_domains: domain 'gone'"):
        TrainData.from_config(make_cfg(root, replay_domains="gone", replay_fraction=0.25))
    cfg = make_cfg(root)
    cfg.model.vocab_size = 300
    with pytest.raises(UserError, match="has 500 ids but the model's vocabulary has 300"):
        TrainData.from_config(cfg)
    # a manifest that under-states its vocabulary: caught when the ids are read
    liar = str(tmp_path / "liar")
    write_domain(liar, "x", [np.arange(1, 200) % 120 + 390], [np.arange(1, 50)], tokenizer_vocab=300)
    cfg = make_cfg(liar)
    cfg.model.vocab_size = 300
    with pytest.raises(UserError, match=r"outside the model vocabulary \[0, 300\)"):
        TrainData.from_config(cfg).batch(0)


def test_doremi_weights_json_in_config(data_dir, tmp_path):
    root, _ = data_dir
    path = tmp_path / "domain_weights.json"
    path.write_text(json.dumps({"average": {"web": 0.1, "code": 0.6, "books": 0.3, "old": 0.0},
                                "final": {"web": 1.0}}))
    td = TrainData.from_config(make_cfg(root, weights=str(path)))
    np.testing.assert_allclose(td.weights_at(0)[[td.domains.index(d) for d in ("web", "code", "books", "old")]],
                               [0.1, 0.6, 0.3, 0.0])


def test_eval_sets_tokenized(data_dir):
    root, _ = data_dir
    cfg = make_cfg(root, domains="web,code", upstream="old")
    sets = eval_sets(cfg.train, Catalog.from_config(cfg))
    assert list(sets) == ["web", "code", "old"]
    val = np.fromfile(os.path.join(root, "old", "val.bin"), dtype="<u2").astype(np.int64)
    n = (len(val) - 1) // T
    rows = np.concatenate([b["tokens"] for b in sets["old"]])
    picks = np.arange(min(n, 16)) * n // min(n, 16)
    np.testing.assert_array_equal(rows, np.stack([val[w * T : w * T + T + 1] for w in picks]))
    assert all((b["domain"] == 2).all() for b in sets["old"])
    assert list(eval_sets(cfg.train, Catalog.from_config(cfg), ["books"])) == ["books"]


def test_synthetic_source_and_disjoint_eval():
    cfg = make_cfg(None)
    td = TrainData.from_config(cfg)
    assert td.domains == ["noise", "pattern", "trivial"]
    b = td.batch(0)
    assert b["tokens"].min() >= 0 and b["tokens"].max() < cfg.model.vocab_size
    sets = eval_sets(cfg.train, Catalog.from_config(cfg))
    assert {k: len(v) for k, v in sets.items()} == {"noise": 2, "pattern": 2, "trivial": 2}
    train = td.sources[0].stream.tokens.astype(np.int64)
    val_rows = np.concatenate([x["tokens"] for x in sets["noise"]])
    assert window_ids(val_rows, train) == [-1] * len(val_rows)  # val is not a slice of train


def test_synthetic_pattern_is_learnable_but_noisy():
    v = 512
    toks = SyntheticStream("pattern", 200_000, v, key=7).tokens.astype(np.int64)
    x0, x1, x2 = toks[:-2], toks[1:-1], toks[2:]
    ok = (x0 > 0) & (x1 > 0) & (x2 > 0)
    rule = ((x2 - x1) % (v - 1) == (x1 - x0) % (v - 1)) & ((x1 - x0) % (v - 1) <= 3)
    frac = rule[ok].mean()  # the progression holds when none of the 3 tokens was replaced
    assert abs(frac - 0.9**3) < 0.01
    noise = SyntheticStream("noise", 200_000, v, key=7).tokens.astype(np.int64)
    n0, n1, n2 = noise[:-2], noise[1:-1], noise[2:]
    assert ((n2 - n1) % (v - 1) == (n1 - n0) % (v - 1)).mean() < 0.01


def test_long_document_upsampling_filter():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 200, size=300)
    toks = rng.integers(1, 100, size=int(lengths.sum()))
    docs = np.split(toks, np.cumsum(lengths)[:-1])
    from cpt_jax.data.sources import ArrayStream

    stream = FilteredStream(ArrayStream(toks, lengths), threshold=100, keep_prob=0.2, key=9)
    keep = keep_documents(lengths, 100, 0.2, 9)
    assert keep[lengths >= 100].all() and 0.1 < keep[lengths < 100].mean() < 0.3
    kept = np.concatenate([d for d, k in zip(docs, keep) if k])
    ws = WindowSource(stream, T, "long", seed=0)
    n = (len(kept) - 1) // T
    assert len(ws) == n
    np.testing.assert_array_equal(ws.windows(np.arange(n)), np.stack([kept[w * T : w * T + T + 1] for w in range(n)]))


def test_worker_processes_keep_the_order(data_dir):
    root, _ = data_dir
    td = TrainData.from_config(make_cfg(root, workers=1, replay_domains="old", replay_fraction=0.25))
    it = td.iterator(3, 10)
    got = list(it)
    assert len(got) == 7
    for k, b in zip(range(3, 10), got):
        want = td.batch(k)
        assert np.array_equal(b["tokens"], want["tokens"]) and np.array_equal(b["domain"], want["domain"])


def test_one_catalog_serves_batches_eval_sets_and_the_banner(data_dir):
    from cpt_jax.train import banner

    root, streams = data_dir
    cfg = make_cfg(root, domains="web", replay_domains="old", replay_fraction=0.25)
    catalog = Catalog.from_config(cfg)
    td = TrainData(cfg.train, catalog)
    want = f"tokenized {root}: web {len(streams['web']):,} tokens, old {len(streams['old']):,} tokens"
    assert td.describe() == want
    # q = 0.25 x 8 = 2 replayed sequences per batch: shares 6/8 and 2/8
    assert banner._mixture(cfg, td) == "web 75.0%, old 25.0% (replay: 2 of 8 sequences per batch from old)"
    assert list(eval_sets(cfg.train, catalog)) == td.domains


def test_resume_through_an_orbax_checkpoint(data_dir, tmp_path):
    import orbax.checkpoint as ocp

    root, _ = data_dir
    cfg = make_cfg(root, replay_domains="old", replay_fraction=0.25, phases="4:web=1")
    td = TrainData.from_config(cfg)
    uninterrupted = [b for _, b in zip(range(10), td.iterator(0))]
    with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:  # stop after 6 steps, save the data state
        mgr.save(6, args=ocp.args.Composite(meta=ocp.args.JsonSave({"step": 6, "data": td.state(6)})))
        mgr.wait_until_finished()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:
        meta = mgr.restore(mgr.latest_step(), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    fresh = TrainData.from_config(cfg)
    resumed = [b for _, b in zip(range(4), fresh.iterator(fresh.resume_step(meta["data"])))]
    for x, y in zip(uninterrupted[6:], resumed):
        assert np.array_equal(x["tokens"], y["tokens"]) and np.array_equal(x["domain"], y["domain"])


def test_long_threshold_config_filters_main_domains(data_dir):
    from cpt_jax.data.indexed import IndexedDataset

    root, _ = data_dir
    td = TrainData.from_config(make_cfg(root, domains="web", replay_domains="old", replay_fraction=0.25,
                                        long_threshold=40, long_keep=0.0))
    sizes = np.asarray(IndexedDataset(os.path.join(root, "web", "train")).sizes)
    assert len(td.sources[0]) == (int(sizes[sizes >= 40].sum()) - 1) // T  # only long documents
    old = np.asarray(IndexedDataset(os.path.join(root, "old", "train")).sizes)
    assert len(td.sources[1]) == (int(old.sum()) - 1) // T  # replay domain untouched
