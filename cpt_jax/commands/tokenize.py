"""`cpt-jax tokenize`: raw text of one domain -> DATA_DIR/<domain>/{train,val}.{bin,idx}."""

from __future__ import annotations

import argparse
import os

from cpt_jax.data.tokenize import tokenize_domain
from cpt_jax.data.tokenizer import tokenizer_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize", help="tokenize .txt/.jsonl(.gz)/.parquet files into a domain of a data dir"
    )
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files or directories (.txt, .txt.gz, .jsonl, .jsonl.gz, .parquet)")
    p.add_argument("--domain", required=True, help="domain name (a folder under --out)")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="data dir holding manifest.json")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="a tokenizer.json, or a Hugging Face model folder holding one (such as "
                        "the Pythia you continue); default: Pythia's, fetched by `cpt-jax assets`")
    p.add_argument("--text-field", default="text", help="JSONL key / parquet column (default text)")
    p.add_argument("--doc-sep", default=None,
                   help=".txt only: 'blank' splits on blank lines, another string is a literal "
                        "separator such as '\\n\\n\\n'; default: one document per file")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="share of documents held out for validation (default 0.01)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="tokenizer processes (default: CPU count, at most 8; 1 = this process)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--eos-id", type=int, default=None,
                   help="EOS appended to each document (default: the id of <|endoftext|>)")
    p.add_argument("--license", default="unknown", help="licence of the inputs, for the manifest")
    p.add_argument("--strict", action="store_true",
                   help="refuse input that is not valid UTF-8 (default: replace and warn)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the manifest records where the tokenizer is, so `convert --to-hf` can ship it with the model
    tok = tokenizer_file(args.tokenizer) if args.tokenizer else None

    entry = tokenize_domain(
        args.input, args.domain, args.out, tok, text_field=args.text_field,
        doc_sep=args.doc_sep, val_fraction=args.val_fraction, workers=args.workers,
        max_tokens=args.max_tokens, eos_id=args.eos_id, license=args.license,
        strict=args.strict,
        tokenizer_name=str(tok) if tok else None,
    )
    print(f"{args.domain}: train {entry['train_tokens']:,} tokens / {entry['train_documents']:,} docs, "
          f"val {entry['val_tokens']:,} tokens / {entry['val_documents']:,} docs -> {args.out}")
    return 0
