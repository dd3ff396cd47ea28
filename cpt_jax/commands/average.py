"""`cpt-jax average`: LAWA offline — the uniform mean of a run's latest checkpoints' params."""

from __future__ import annotations

import argparse
import os
import time

from cpt_jax import lawa, ownership, storage
from cpt_jax.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "average",
        help="average the params of a run's latest checkpoints (LAWA), streaming",
        description="Uniform average of the params of the k latest checkpoints (every nu steps) "
        "of a training run; optimizer state is never read. Peak memory is about two copies of "
        "the params whatever k is.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run dir (RUN/checkpoints/<step>/params)")
    src.add_argument(
        "--ckpt", action="append", help="a params-only checkpoint or step dir (repeat: averages them all)"
    )
    p.add_argument("--last", type=int, help="k: average the last k checkpoints")
    p.add_argument("--every", type=int, help="nu: only checkpoints at multiples of nu steps")
    p.add_argument("--steps", help="explicit comma-separated steps instead of --last")
    p.add_argument("--allow-uneven", dest="allow_uneven", action="store_true",
                   help="with --every: average even when a missing checkpoint leaves uneven gaps")
    p.add_argument(
        "--windows", action="store_true",
        help="sliding mode: one average of k checkpoints ending at each checkpoint, in OUT/<step>",
    )
    p.add_argument("--out", required=True, help="output params-only checkpoint dir")
    p.add_argument("--to-hf", dest="to_hf", help="also write a Hugging Face dir of the average")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="average even checkpoints holding NaN or inf (refused by default)")
    p.add_argument("--force", action="store_true",
                   help="write even into a run directory or over files average did not write")
    p.set_defaults(func=run)


def _parse_steps(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--steps expects comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    explicit = _parse_steps(args.steps)
    outs = [o for o in (args.out, args.to_hf) if o]
    for out in outs:
        ownership.check(out, "average", args.force)  # before reading anything
    start = time.perf_counter()
    if args.ckpt:
        if args.last is not None or args.every is not None or explicit or args.windows:
            raise UserError("--ckpt averages exactly the dirs given; --last/--every/--steps/--windows need --run")
        sources = [lawa.dir_source(path) for path in args.ckpt]
        params = lawa.average(sources, allow_nonfinite=args.allow_nonfinite)
        _claim(outs, args.force)
        info = {"sources": [s.label for s in sources]}
        lawa.save_average(args.out, params, sources[0].model, info)
        _maybe_hf(args.to_hf, params, sources[0].model)
        print(f"averaged {len(sources)} checkpoints -> {args.out} ({time.perf_counter() - start:.1f}s)")
        return 0

    available = lawa.run_steps(args.run)
    if args.windows:
        if explicit:
            raise UserError("--windows slides over the run; it takes --last K [--every NU], not --steps")
        if args.to_hf:
            raise UserError("--to-hf writes one average; run it without --windows")
        if args.last is None:
            raise UserError("--windows needs --last K (the window size)")
        spans = lawa.windows(available, args.last, args.every, args.allow_uneven)
        _claim(outs, args.force)
        model = lawa.run_sources(args.run, spans[0][:1])[0].model
        for span, params in lawa.iter_window_averages(args.run, spans, args.allow_nonfinite):
            lawa.save_average(
                os.fspath(storage.path(args.out) / str(span[-1])), params, model,
                {"run": os.fspath(storage.path(args.run)), "steps": span},
            )
            print(f"window ending at step {span[-1]}: steps {span}")
        print(f"wrote {len(spans)} windowed averages -> {args.out} ({time.perf_counter() - start:.1f}s)")
        return 0

    steps = lawa.select_steps(available, args.last, args.every, explicit, args.allow_uneven)
    gaps = sorted({b - a for a, b in zip(steps, steps[1:])})
    print(f"averaging steps {steps}" + (f" (gaps {gaps})" if len(gaps) > 1 else ""))
    sources = lawa.run_sources(args.run, steps)
    params = lawa.average(sources, allow_nonfinite=args.allow_nonfinite)
    _claim(outs, args.force)
    lawa.save_average(args.out, params, sources[0].model, {"run": os.fspath(storage.path(args.run)), "steps": steps})
    _maybe_hf(args.to_hf, params, sources[0].model)
    print(f"averaged steps {steps} -> {args.out} ({time.perf_counter() - start:.1f}s)")
    return 0


def _claim(outs: list[str], force: bool) -> None:
    for out in outs:
        ownership.claim(out, "average", force)


def _maybe_hf(out: str | None, params: dict, model: dict) -> None:
    if not out:
        return
    from cpt_jax.model.checkpoint import config_from_dict

    try:
        from cpt_jax.model import hf
    except ImportError:
        raise UserError("--to-hf needs cpt_jax.model.hf, which this install lacks") from None
    if not hasattr(hf, "save"):
        raise UserError("--to-hf needs cpt_jax.model.hf.save, which this install lacks")
    with storage.writable_dir(out) as local_out:
        hf.save(params, local_out, config_from_dict(model))
    print(f"Hugging Face copy -> {out}")
