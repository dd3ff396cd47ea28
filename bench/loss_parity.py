"""Loss-curve parity: our train step vs the Hugging Face peer, same init, same batches, fp32 CPU.

Our ``init_params`` -> ``hf.save`` -> ``GPTNeoXForCausalLM.from_pretrained`` gives both sides the
same theta_0. Both then take the same batches with AdamW(b1, b2, eps, lambda) under the same
eta_t (our schedule's values are handed to torch every step), GPT-NeoX's decay mask on both
sides, global-norm clipping at c. Per step we compare the loss L_t (computed before update t)
and the pre-clipping gradient norm ||g_t||.

The batches follow a fixed random sparse bigram chain (each token has ``fanout`` successors),
so the loss falls from ln V towards ln(fanout) and the curve has a shape worth comparing.

    python bench/loss_parity.py                       # 100 steps, tiny model
    python bench/loss_parity.py --steps 30 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

import ours as ours_lib  # noqa: E402
from cpt_jax.model import hf, pythia  # noqa: E402


def bigram_batches(n: int, batch: int, seq: int, vocab: int, fanout: int = 4,
                   seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` batches drawn from a random chain where token ``a`` is followed by one of
    ``fanout`` fixed successors, uniformly (entropy ln fanout per token after the first)."""
    rng = np.random.default_rng(seed)
    succ = rng.integers(0, vocab, (vocab, fanout))
    out = []
    for _ in range(n):
        toks = np.empty((batch, seq + 1), np.int64)
        toks[:, 0] = rng.integers(0, vocab, batch)
        for t in range(1, seq + 1):
            toks[:, t] = succ[toks[:, t - 1], rng.integers(0, fanout, batch)]
        out.append({"tokens": toks.astype(np.int32), "domain": np.zeros((batch,), np.int32)})
    return out


def parity(steps: int = 100, batch: int = 4, seq: int = 64, seed: int = 0,
           opt: ours_lib.OptSettings | None = None, shape: dict[str, Any] | None = None,
           fused: bool = False) -> dict[str, Any]:
    """Train ours and the peer side by side; returns both loss and grad-norm curves."""
    import torch

    import peer_hf

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # OpenMP spin-waits on a loaded 2-core host otherwise
    o = opt or ours_lib.OptSettings(lr=1e-3, schedule="cosine", warmup_steps=max(1, steps // 10))
    c = pythia.PythiaConfig(**(shape or dict(vocab_size=512, hidden_size=64, num_layers=2,
                                              num_heads=4)), attention="xla")
    params = pythia.init_params(c, jax.random.key(seed))
    data = bigram_batches(steps, batch, seq, c.vocab_size, seed=seed)
    lrs = ours_lib.lr_values(o, steps)

    with tempfile.TemporaryDirectory() as tmp:
        hf.save(params, tmp, c)
        dev = torch.device("cpu")
        model = peer_hf.build_model(c, dev, from_dir=tmp, attn="sdpa")
    opt_t = peer_hf.optimizer(model, o.lr, o.b1, o.b2, o.eps, o.weight_decay, fused=fused)
    peer_step = peer_hf.make_step(model, opt_t, o.grad_clip, dev, bf16=False, compile_=False)
    ours = ours_lib.build(c, o, batch, steps, params=params)

    ours_loss, ours_norm, peer_loss, peer_norm = [], [], [], []
    t0 = time.perf_counter()
    for t, b in enumerate(data):
        m = jax.device_get(ours.run(b))
        ours_loss.append(float(m["loss"]))
        ours_norm.append(float(m["grad_norm"]))
        assert abs(float(m["lr"]) - lrs[t]) <= 1e-6 * max(lrs[t], 1e-12) + 1e-12
        loss, norm = peer_step(b["tokens"], float(lrs[t]))
        peer_loss.append(float(loss))
        peer_norm.append(float(norm))
    a, p = np.asarray(ours_loss), np.asarray(peer_loss)
    rel = np.abs(a - p) / np.abs(p)
    na, npeer = np.asarray(ours_norm), np.asarray(peer_norm)
    return {
        "steps": steps, "batch": batch, "seq": seq, "model": {k: getattr(c, k) for k in
                                                              ("vocab_size", "hidden_size", "num_layers", "num_heads")},
        "opt": (vars(o) if not hasattr(o, "__dataclass_fields__")
                else {k: getattr(o, k) for k in o.__dataclass_fields__}),
        "ours_loss": ours_loss, "peer_loss": peer_loss, "ours_grad_norm": ours_norm,
        "peer_grad_norm": peer_norm, "lr": lrs.tolist(),
        "max_rel_loss_diff": float(rel.max()), "max_rel_loss_diff_first10": float(rel[:10].max()),
        "max_rel_grad_norm_diff": float((np.abs(na - npeer) / npeer).max()),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fused", action="store_true", help="torch fused AdamW (CPU kernel)")
    ap.add_argument("--json", default="", help="write the result here")
    args = ap.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")
    o = ours_lib.OptSettings(lr=args.lr, schedule="cosine", warmup_steps=max(1, args.steps // 10))
    r = parity(args.steps, args.batch, args.seq, opt=o, fused=args.fused)
    print(f"{'step':>4} {'lr':>9} {'ours loss':>10} {'peer loss':>10} {'rel diff':>9} "
          f"{'ours |g|':>9} {'peer |g|':>9}")
    for t in range(r["steps"]):
        a, p = r["ours_loss"][t], r["peer_loss"][t]
        print(f"{t:4d} {r['lr'][t]:9.2e} {a:10.6f} {p:10.6f} {abs(a - p) / abs(p):9.2e} "
              f"{r['ours_grad_norm'][t]:9.5f} {r['peer_grad_norm'][t]:9.5f}")
    print(f"max relative loss difference: {r['max_rel_loss_diff']:.3e} "
          f"(first 10 steps {r['max_rel_loss_diff_first10']:.3e}); "
          f"grad norm {r['max_rel_grad_norm_diff']:.3e}; {r['seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return r


if __name__ == "__main__":
    main()
