"""Time of a DoReMi proxy step over a plain train step (same model, batch and optimizer).

The plain step is ``value_and_grad`` of the mean next-token loss plus an AdamW update; the
DoReMi step adds ``DoReMiObjective.prepare`` (reference forward, lambda, alpha step) and takes
the gradient of ``DoReMiObjective.loss``. Ideal ratio ~ 1.33: one extra forward (the
reference's) on top of forward + backward (~3 forwards). With ``--micro-batches`` > 1 the proxy
forward of ``prepare`` cannot be reused for the gradient (ideal ~ 1.67).

    python bench/doremi_step.py                      # tiny CPU model
    python bench/doremi_step.py --preset 160m --batch 8 --seq 2048 --dtype bfloat16   # GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cpt_jax import doremi, losses
from cpt_jax.model import pythia
from cpt_jax.model.presets import PRESETS


def build(args: argparse.Namespace):
    if args.preset:
        p = PRESETS[args.preset]
        cfg = pythia.PythiaConfig(
            vocab_size=p.vocab_size, hidden_size=p.hidden_size, num_layers=p.num_layers,
            num_heads=p.num_heads, rotary_pct=p.rotary_pct, compute_dtype=args.dtype,
            attention=args.attention, remat=args.remat,
        )
    else:
        cfg = pythia.PythiaConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                                  compute_dtype=args.dtype, attention=args.attention)
    params = pythia.init_params(cfg, jax.random.key(0))
    reference = pythia.init_params(cfg, jax.random.key(1))
    rng = np.random.RandomState(0)
    batch = {
        "tokens": jnp.asarray(rng.randint(0, cfg.vocab_size, (args.batch, args.seq + 1)), jnp.int32),
        "domain": jnp.asarray(np.arange(args.batch) % args.domains, jnp.int32),
    }
    return cfg, params, reference, batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--domains", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--micro-batches", type=int, default=1)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", default="", help="also write the result to this file")
    args = ap.parse_args()
    cfg, params, reference, batch = build(args)
    tx = optax.adamw(1e-4)
    m = args.micro_batches

    def accumulate(loss_fn, params, batch, ctx):
        """Sum of value and gradient over m micro-batches (a scan, as the engine does)."""
        micro = jax.tree.map(lambda a: a.reshape(m, -1, *a.shape[1:]), batch)

        def body(acc, mb):
            (v, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, ctx)
            return jax.tree.map(jnp.add, acc, (v, g)), None

        zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
        return jax.lax.scan(body, zero, micro)[0]

    def plain_loss(params, mb, count):
        return jnp.sum(losses.next_token_losses(params, mb["tokens"], cfg)) / count, None

    def plain_step(params, opt, batch):
        count = batch["tokens"].shape[0] * (batch["tokens"].shape[1] - 1)
        v, g = accumulate(plain_loss, params, batch, count)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, v

    def doremi_step(obj, params, opt, extras, batch):
        ctx, extras, _ = obj.prepare(params, batch, extras)
        v, g = accumulate(obj.loss, params, batch, ctx)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, extras, v

    opt = tx.init(params)
    steps = {"plain": (jax.jit(plain_step), (params, opt))}
    for name, reuse in (("doremi", True), ("doremi_recompute", False)):
        if m > 1 and not reuse:
            continue  # with micro-batches the proxy forward is recomputed anyway
        obj = doremi.DoReMiObjective(cfg, args.domains, reference, micro_batches=m, reuse_forward=reuse)
        fn = jax.jit(functools.partial(doremi_step, obj))
        steps[name] = (fn, (params, opt, obj.init_extras(params)))
    state, times = {}, {name: [] for name in steps}
    for name, (fn, init) in steps.items():  # compile + one warm step each
        state[name] = jax.block_until_ready(fn(*init, batch))
    for _ in range(args.iters):  # interleaved, so load from other processes hits all alike
        for name, (fn, _) in steps.items():
            t0 = time.perf_counter()
            state[name] = jax.block_until_ready(fn(*state[name][:-1], batch))
            times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    result = {
        "device": jax.devices()[0].device_kind, "preset": args.preset or "tiny(d=64,L=2,V=512)",
        "batch": args.batch, "seq": args.seq, "dtype": args.dtype, "micro_batches": m,
        **{f"{name}_step_s": t for name, t in med.items()},
        **{f"ratio_{name}": t / med["plain"] for name, t in med.items() if name != "plain"},
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
