"""Data-loader throughput: tokens/s (and per CPU core) of ``TrainData.iterator``.

Writes a real Megatron ``.bin/.idx`` data dir of random documents (two domains, the main one and
a replay one) to a temporary directory, then times the grain iterator at batch B x (T + 1) with
0, 1, 2 ... worker processes. Tokens are counted as B x T per batch (what a train step consumes).
CPU seconds are user + system time of this process and its worker processes over the timed
window (psutil), so "per core" = tokens / CPU-second.

    .venv/bin/python bench/loader.py --tokens 50000000 --workers 0,1,2
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np


def write_data_dir(root: str, tokens: int, vocab: int = 50277, seed: int = 0) -> None:
    """``main`` (80 % of ``tokens``) and ``old`` (20 %): documents of 50..4000 random ids + EOS."""
    from cpt_jax.data.indexed import IndexedDatasetWriter
    from cpt_jax.data.manifest import update_manifest

    rng = np.random.default_rng(seed)
    tok = {"name": "bench-random", "sha256": "0" * 64, "vocab_size": vocab}
    for name, share in (("main", 0.8), ("old", 0.2)):
        entry = {"train": f"{name}/train", "val": f"{name}/val", "license": "none", "sources": []}
        for split, n in (("train", int(tokens * share)), ("val", 100_000)):
            docs = 0
            with IndexedDatasetWriter(os.path.join(root, name, split)) as w:
                written = 0
                while written < n:
                    doc = rng.integers(1, vocab, size=int(rng.integers(50, 4001)), dtype=np.uint16)
                    doc[-1] = 0
                    w.add_document(doc)
                    written, docs = written + len(doc), docs + 1
            entry[f"{split}_tokens"], entry[f"{split}_documents"] = written, docs
        update_manifest(root, tok, name, entry)


def cpu_seconds() -> float:
    """User + system CPU time of this process and all its live descendants."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(root: str, workers: int, batch: int, seq: int, batches: int, warmup: int) -> dict:
    from cpt_jax.config import defaults
    from cpt_jax.configure import validate
    from cpt_jax.data.pipeline import TrainData

    cfg = defaults()
    cfg.model.preset = "410m"
    cfg.train.batch_size, cfg.train.seq_len = batch, seq
    cfg.data.source, cfg.data.dir, cfg.data.workers = "tokenized", root, workers
    cfg.data.domains, cfg.data.replay_domains, cfg.data.replay_fraction = "main", "old", 0.25
    validate(cfg)
    it = TrainData.from_config(cfg).iterator(0)
    for _ in range(warmup):  # worker start-up and first reads are not timed
        next(it)
    c0, t0 = cpu_seconds(), time.perf_counter()
    checksum = 0
    for _ in range(batches):
        checksum += int(next(it)["tokens"][:, -1].sum())
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    it.close()
    tokens = batches * batch * seq
    return {"workers": workers, "wall_s": wall, "cpu_s": cpu, "tokens_per_s": tokens / wall,
            "tokens_per_cpu_s": tokens / max(cpu, 1e-9), "batches": batches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=50_000_000, help="tokens in the on-disk data dir")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2048, help="T; batches hold T + 1 tokens")
    ap.add_argument("--batches", type=int, default=1000, help="timed batches per setting")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--dir", default="", help="reuse / keep this data dir (default: a temp dir)")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="cpt-jax-loader-")
    try:
        if not os.path.isfile(os.path.join(root, "manifest.json")):
            t0 = time.perf_counter()
            write_data_dir(root, args.tokens)
            print(f"wrote {args.tokens:,} tokens to {root} in {time.perf_counter() - t0:.1f} s")
        print(f"{platform.node()} {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
        print(f"batch {args.batch} x {args.seq + 1}, {args.batches} timed batches")
        print("| workers | tokens/s | CPU s | tokens per CPU-second |")
        print("|---|---|---|---|")
        for w in (int(x) for x in args.workers.split(",")):
            r = measure(root, w, args.batch, args.seq, args.batches, args.warmup)
            print(f"| {w} | {r['tokens_per_s'] / 1e6:.2f} M | {r['cpu_s']:.2f} | "
                  f"{r['tokens_per_cpu_s'] / 1e6:.2f} M |", flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
