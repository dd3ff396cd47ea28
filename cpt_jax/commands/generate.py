"""`cpt-jax generate`: complete text prompts with a checkpoint (KV-cache decoding in JAX)."""

from __future__ import annotations

import argparse
import json
from cpt_jax import storage
from cpt_jax.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="complete prompts with a checkpoint (greedy by default)")
    p.add_argument("--checkpoint", required=True,
                   help="params checkpoint, run dir, RUN/checkpoints/<step>, or Hugging Face dir")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="one JSON string per line, after the --prompt ones")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to add at most (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); cut before it")
    p.add_argument("--no-eos-stop", action="store_true", help="keep going past the end-of-text token")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json or a folder with one (default: the checkpoint's, else Pythia's)")
    p.add_argument("--out", default=None, help='write {"prompt", "completion"} JSON lines here, in input order')
    p.set_defaults(func=run)


def read_prompts(path: str) -> list[str]:
    """A file of one JSON string per line (blank lines skipped)."""
    prompts = []
    for n, line in enumerate(storage.path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if not isinstance(value, str):
            raise UserError(f"{path} line {n}: not a JSON string")
        prompts.append(value)
    return prompts


def run(args: argparse.Namespace) -> int:
    from cpt_jax import generate as gen
    from cpt_jax.eval.multiple_choice import on_device
    from cpt_jax.model import checkpoint
    from cpt_jax.model.hf_export import checkpoint_tokenizer, eos_id

    prompts = list(args.prompt) + (read_prompts(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise UserError("no prompts: give --prompt or --prompts-file")
    sampling = gen.Sampling(args.temperature, args.top_k, args.top_p)
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:  # refused before any weight is read
            raise UserError(f"{flag} must be at least 1, got {value}")
    params, config = checkpoint.load_params(args.checkpoint)
    tok = checkpoint_tokenizer(args.checkpoint, args.tokenizer, config.vocab_size)
    empty = [i for i, p in enumerate(prompts) if not tok.encode(p, add_special_tokens=False).ids]
    if empty:
        raise UserError(f"prompt {empty[0] + 1} encodes to no tokens")
    texts = gen.generate_text(on_device(params), config, tok, prompts, args.max_new_tokens, sampling,
                              args.stop, args.seed, None if args.no_eos_stop else eos_id(tok),
                              args.batch_size)
    lines = [json.dumps({"prompt": p, "completion": c}, ensure_ascii=False) for p, c in zip(prompts, texts)]
    if args.out:
        storage.write_text(args.out, "".join(line + "\n" for line in lines))
        print(f"wrote {len(lines)} completions to {args.out}")
    else:
        for p, c in zip(prompts, texts):
            print(f"{p}{c}\n---")
    return 0
