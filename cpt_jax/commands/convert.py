"""`cpt-jax convert`: Hugging Face GPT-NeoX directory <-> params-only orbax checkpoint."""

from __future__ import annotations

import argparse

from cpt_jax import integrity, ownership, storage


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a Hugging Face GPT-NeoX directory to a params checkpoint or back",
        description="cpt-jax convert --from-hf DIR --to CKPT_DIR | --from CKPT_DIR --to-hf DIR",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR", help="Hugging Face GPT-NeoX directory to read")
    src.add_argument("--from", dest="from_ckpt", metavar="CKPT_DIR",
                     help="params checkpoint, run directory (latest step) or step directory to read")
    dst = p.add_mutually_exclusive_group(required=True)
    dst.add_argument("--to", metavar="CKPT_DIR", help="params checkpoint directory to write")
    dst.add_argument("--to-hf", metavar="DIR", help="Hugging Face directory to write")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="--to-hf: tokenizer.json (or a folder holding one) to write beside the "
                        "weights (default: the one inside the source, the one its data was "
                        "tokenized with, or Pythia's)")
    p.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                   help="--to-hf: split the safetensors into shards of at most this size, with "
                        "model.safetensors.index.json (default 5GB)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="cast the weights (default: keep the source dtype)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="convert even weights holding NaN or inf (refused by default)")
    p.add_argument("--force", action="store_true",
                   help="write even into a run directory or over files convert did not write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from cpt_jax.model import checkpoint, hf, pythia

    target = args.to_hf or args.to
    ownership.check(target, "convert", args.force)  # before reading anything
    if args.from_hf:
        params, config = hf.load_params(storage.readable_dir(args.from_hf, "hf"), dtype=None)
        integrity.refuse_nonfinite(integrity.tree_digest(params)[1], args.from_hf, args.allow_nonfinite)
    else:
        params, config = checkpoint.load_params(args.from_ckpt, allow_nonfinite=args.allow_nonfinite)
    if args.dtype:
        params = integrity.cast(params, jnp.dtype(args.dtype))
        config = dataclasses.replace(config, param_dtype=args.dtype, compute_dtype=args.dtype)
    n = pythia.count_params(params)
    src = args.from_hf or args.from_ckpt
    ownership.claim(target, "convert", args.force)
    if args.to_hf:
        from cpt_jax.model import hf_export

        tok = hf_export.resolve_tokenizer(src, args.tokenizer, config.vocab_size)
        with storage.writable_dir(args.to_hf) as local_out:
            hf_export.write_folder(params, config, local_out, tok, args.max_shard_size)
        out, kind = args.to_hf, "Hugging Face directory"
    else:
        out = checkpoint.save_params(args.to, params, config)
        kind = "params checkpoint"
    dtype = jax.tree.leaves(params)[0].dtype
    print(f"{src} -> {kind} {out}: L={config.num_layers} d={config.hidden_size} "
          f"V={config.vocab_size} params={n:,} dtype={dtype}")
    return 0
