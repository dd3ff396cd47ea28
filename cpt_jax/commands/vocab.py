"""`cpt-jax vocab extend`: add domain BPE tokens to a tokenizer and resize a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cpt_jax import ownership, vocab
from cpt_jax.data import readers
from cpt_jax.data.tokenizer import load_tokenizer, pythia_tokenizer
from cpt_jax.errors import UserError


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
    import dataclasses

    from cpt_jax.model.checkpoint import load_params, save_params

    if args.new_tokens <= 0:
        raise UserError(f"--new-tokens must be > 0, got {args.new_tokens}")
    ownership.check(args.out, "vocab extend", args.force)  # before reading anything
    base = load_tokenizer(args.base_tokenizer) if args.base_tokenizer else pythia_tokenizer()
    docs = list(readers.iter_documents(readers.expand_inputs(args.corpus), args.text_field))
    if not docs:
        raise UserError("the domain corpus holds no documents")
    params, config = load_params(args.checkpoint)
    if params["embed_in"].shape[0] != config.vocab_size:
        raise UserError(f"{args.checkpoint}: embed_in has {params['embed_in'].shape[0]} rows, "
                        f"model.json says vocab_size {config.vocab_size}")
    ext = vocab.extend_tokenizer(json.loads(base.to_str()), docs, args.new_tokens)
    old_V = int(params["embed_in"].shape[0])
    params = vocab.resize_embeddings(params, ext.base_size, ext.pieces)
    new_V = int(params["embed_in"].shape[0])
    config = dataclasses.replace(config, vocab_size=new_V)

    from tokenizers import Tokenizer

    extended = Tokenizer.from_str(json.dumps(ext.spec))
    before = vocab.tokens_per_byte(base, docs)
    after = vocab.tokens_per_byte(extended, docs)
    out = Path(args.out)
    ownership.claim(out, "vocab extend", args.force)
    extended.save(str(out / "tokenizer.json"))
    save_params(out, params, config)
    info = {
        "base_size": ext.base_size, "old_vocab_size": old_V, "vocab_size": new_V,
        "new_rows": [int(i) for i in ext.new_ids],
        "new_tokens": [{"id": int(i), "token": t, "text": extended.decode([int(i)]),
                        "pieces": p} for i, t, p in zip(ext.new_ids, ext.new_tokens, ext.pieces)],
        "tokens_per_byte": {"before": before, "after": after},
    }
    (out / "vocab.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    print(f"added {len(ext.new_tokens)} tokens (ids {ext.base_size}..{ext.base_size + len(ext.new_tokens) - 1}); "
          f"vocab_size {new_V}")
    print(f"tokens per byte on the domain corpus: before {before:.4f}  after {after:.4f}  "
          f"({100 * (after / before - 1):+.1f}%)")
    print(f"wrote {out}/tokenizer.json, {out}/vocab.json and the params checkpoint")
    return 0
