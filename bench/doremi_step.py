"""Time of a DoReMi proxy step over a plain train step (same model, batch and optimizer).

Both are the engine's jitted step (``make_train_step``, AdamW, donation) built as
``train.loop.run`` builds it: the plain one with ``NextTokenObjective``, the DoReMi one with
``DoReMiObjective`` (reference forward, lambda, alpha step in ``prepare``). Ideal ratio ~ 1.33:
one extra forward (the reference's) on top of forward + backward (~3 forwards). With
``--micro-batches`` > 1 the proxy forward of ``prepare`` cannot be reused for the gradient
(ideal ~ 1.67); ``doremi_recompute`` shows that cost at one micro-batch.

    python bench/doremi_step.py                      # tiny CPU model (V 1024, d 64, L 2)
    python bench/doremi_step.py --preset 160m --batch 8 --seq 2048 --dtype bfloat16   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from cpt_jax import doremi, sharding
from cpt_jax.model import pythia
from cpt_jax.optim import make_optimizer
from cpt_jax.schedules import make_schedule
from cpt_jax.train.state import abstract_state, fresh_state, state_shardings
from cpt_jax.train.step import NextTokenObjective, make_train_step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ours import OptSettings, model_config, opt_config, random_batches  # noqa: E402


def build(c: pythia.PythiaConfig, objective, batch: int, micro: int, steps: int):
    """The engine's state and jitted step (as ``train.loop.run`` builds them) for ``objective``."""
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    o = opt_config(OptSettings())
    schedule = make_schedule(o.schedule, o.optim.peak_lr, steps)
    tx = make_optimizer(o.optim, schedule)
    shard = state_shardings(abstract_state(c, tx, objective), mesh)
    state = fresh_state(c, tx, shard, 0, objective=objective)
    step = make_train_step(objective, tx, schedule, shard, mesh, micro)
    return state, step, mesh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", help="tiny (V 1024, d 64, L 2) or a Pythia size")
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
    c = model_config(args.preset, compute_dtype=args.dtype, attention=args.attention, remat=args.remat)
    m = args.micro_batches
    reference = lambda: pythia.init_params(c, jax.random.key(1))  # noqa: E731 (the step donates it)
    objectives = {"plain": NextTokenObjective(c, args.domains)}
    objectives["doremi"] = doremi.DoReMiObjective(c, args.domains, reference(), micro_batches=m)
    if m == 1:  # the same step recomputing the proxy forward (what micro-batching forces)
        objectives["doremi_recompute"] = doremi.DoReMiObjective(
            c, args.domains, reference(), micro_batches=m, reuse_forward=False)
    host = random_batches(1, args.batch, args.seq, c.vocab_size)[0]
    host["domain"] = (np.arange(args.batch) % args.domains).astype(np.int32)
    runs, state, times = {}, {}, {}
    for name, obj in objectives.items():  # compile + one warm step each
        st, step, mesh = build(c, obj, args.batch, m, args.iters + 1)
        batch = sharding.global_batch(host, mesh, args.batch)
        st, out = step(st, batch)
        jax.block_until_ready(out)
        runs[name], state[name], times[name] = (step, batch), st, []
    for _ in range(args.iters):  # interleaved, so load from other processes hits all alike
        for name, (step, batch) in runs.items():
            t0 = time.perf_counter()
            state[name], out = step(state[name], batch)
            jax.block_until_ready(out)
            times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    result = {
        "device": jax.devices()[0].device_kind, "preset": args.preset,
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
