"""`cpt-jax vocab extend`: add domain BPE tokens to a tokenizer and resize a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from cpt_jax import vocab


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vocab", help="vocabulary expansion with subword-mean initialisation")
    verbs = p.add_subparsers(dest="vocab_verb", metavar="ACTION")
    verbs.required = True
    e = verbs.add_parser("extend", help="train new BPE tokens on a domain corpus; resize the model")
    e.add_argument("--base-tokenizer", default=None,
                   help="base tokenizer.json (default: the cached Pythia tokenizer)")
    e.add_argument("--corpus", nargs="+", required=True, help="domain files (.txt/.jsonl/.parquet)")
    e.add_argument("--text-field", default="text", help="jsonl/parquet text field")
    e.add_argument("--new-tokens", type=int, required=True, help="how many tokens to add")
    e.add_argument("--checkpoint", required=True,
                   help="params checkpoint, run dir or Hugging Face dir to resize")
    e.add_argument("--out", required=True,
                   help="output dir: tokenizer.json, vocab.json, model.json + params/")
    e.add_argument("--force", action="store_true",
                   help="write even into a run directory or over files vocab extend did not write")
    e.set_defaults(func=run_extend)


def run_extend(args: argparse.Namespace) -> int:
    record = vocab.extend_checkpoint(args.checkpoint, args.corpus, args.new_tokens, args.out,
                                     base_tokenizer=args.base_tokenizer, text_field=args.text_field,
                                     force=args.force)
    first, added = record["base_size"], len(record["new_tokens"])
    before, after = record["tokens_per_byte"]["before"], record["tokens_per_byte"]["after"]
    print(f"added {added} tokens (ids {first}..{first + added - 1}); vocab_size {record['vocab_size']}")
    print(f"tokens per byte on the domain corpus: before {before:.4f}  after {after:.4f}  "
          f"({100 * (after / before - 1):+.1f}%)")
    out = Path(args.out)
    print(f"wrote {out}/tokenizer.json, {out}/{vocab.RECORD} and the params checkpoint")
    return 0
