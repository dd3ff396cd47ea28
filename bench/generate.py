"""Greedy generation speed: ours (KV cache in JAX) against Hugging Face ``generate`` (torch,
KV cache) on the same tiny random Pythia, on this machine's CPU.

    .venv/bin/python bench/generate.py [--batch 8] [--prompt-len 32] [--new 128] [--repeats 3]

Both decode ``--new`` tokens for ``--batch`` random prompts of ``--prompt-len`` tokens (EOS
off, so every row runs to the end). Each side runs once to warm up (our compile), then
``--repeats`` timed runs; tokens/s = batch x new / median seconds. Prints one JSON line, with
whether the two produced the same tokens (random init: the logits are close together, so a
rounding difference may flip a token; same_tokens is a sanity check, not a parity test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
from transformers import GPTNeoXForCausalLM

from cpt_jax import generate as gen
from cpt_jax.model import hf, pythia


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args(argv)

    config = pythia.PythiaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                                 num_heads=4, max_position_embeddings=args.prompt_len + args.new)
    params = pythia.init_params(config, jax.random.key(0))
    prompts = np.random.default_rng(0).integers(1, args.vocab, (args.batch, args.prompt_len))
    with tempfile.TemporaryDirectory() as d:
        hf.save(params, d, config)
        model = GPTNeoXForCausalLM.from_pretrained(d, dtype=torch.float32).eval()

    ours = lambda: gen.generate_ids(params, config, prompts.tolist(), args.new, eos_id=None,
                                    batch_size=args.batch)

    def peer():
        with torch.no_grad():
            out = model.generate(torch.tensor(prompts), attention_mask=torch.ones_like(torch.tensor(prompts)),
                                 max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
        return out[:, args.prompt_len:].tolist()

    ours_first, ours_s, ours_out = _timed(ours, args.repeats)
    peer_first, peer_s, peer_out = _timed(peer, args.repeats)
    n = args.batch * args.new
    result = {
        "model": f"L={args.layers} d={args.hidden} V={args.vocab}", "batch": args.batch,
        "prompt_len": args.prompt_len, "new": args.new, "repeats": args.repeats,
        "ours_tok_s": round(n / ours_s, 1), "hf_tok_s": round(n / peer_s, 1),
        "ratio": round(peer_s / ours_s, 2), "ours_first_s": round(ours_first, 2),
        "hf_first_s": round(peer_first, 2), "same_tokens": ours_out == peer_out,
        "torch_threads": torch.get_num_threads(), "jax": jax.__version__, "torch": torch.__version__}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
