"""`cpt-jax compile`: a config's train step compiled for a TPU slice or GPU host that this
machine does not have; its memory per chip, FLOPs, collectives and roofline."""

from __future__ import annotations

import argparse
import dataclasses
import json

GIB = 1 << 30


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile",
        help="compile a config's train step for a TPU slice or GPU host, ahead of time",
        description="Compile the config's train step (its mesh, attention, remat, batch, "
        "micro-batches, vocab chunk and AdamW state) for a named slice -- v4-8, v5e-8, v5p-8, "
        "v6e-8, 2xv5e-256, 8xh100, 8xh200, 8xa100-80gb, 1xh100, 2x8xh100 -- on this machine, "
        "with the slice's own compiler and no device. Prints memory per chip against HBM, "
        "FLOPs, collectives and a roofline bound. Exit 0 when it fits, 1 when it does not.",
    )
    p.add_argument("--config", required=True, help="experiment file defining get_config()")
    p.add_argument("--topology", required=True, help="slice name, e.g. v5e-8 or 8xh100")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    p.add_argument("--fit", choices=["batch"], default=None,
                   help="find the largest train.batch_size that fits (bisection over compiles)")
    p.add_argument("--doremi", action="store_true",
                   help="compile the DoReMi proxy's Group-DRO step (proxy + reference model)")
    p.add_argument("--no-roofline", dest="roofline", action="store_false",
                   help="skip the two small unrolled compiles the roofline bound needs")
    p.add_argument("--cache", default="", help="directory caching each compile's figures")
    p.set_defaults(func=run, takes_config=True)


def run(args: argparse.Namespace) -> int:
    from cpt_jax.aot import plan as plan_lib
    from cpt_jax.aot import topology
    from cpt_jax.errors import UserError

    topo = topology.parse(args.topology)
    missing = topology.missing_compiler(topo)
    if missing:
        raise UserError(missing)
    from cpt_jax import configure

    cfg = configure.load(args.config, args.config_overrides)
    if args.fit == "batch":
        best, plan = plan_lib.fit_batch(cfg, topo, args.doremi, cache=args.cache or None)
        if plan is None:
            print(f"fit: not even {cfg.train.micro_batches} row(s) per batch shard fit on {topo.name}; "
                  "try model.remat=full, a smaller train.vocab_chunk or more chips")
            return 1
        cfg.train.batch_size = best
        print(f"fit: train.batch_size={best} is the largest that fits on {topo.name}")
    plan = plan_lib.compile_plan(cfg, topo, args.doremi, args.roofline, cache=args.cache or None)
    print("\n".join(report_lines(plan, topo)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dataclasses.asdict(plan), f, indent=2)
            f.write("\n")
    return 0 if plan.fits else 1


def report_lines(plan: object, topo: object) -> list[str]:
    """The printed report of a :class:`cpt_jax.aot.plan.Plan`."""
    p = plan
    g = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
    mesh = " ".join(f"{k}={v}" for k, v in p.mesh.items())
    chip = "GPU" if topo.platform == "gpu" else "chip"
    rows = p.batch_size // max(1, p.mesh["data"] * p.mesh["fsdp"])
    lines = [
        f"topology     {p.topology}: {p.chips} x {topo.chip.name}, mesh {mesh}",
        f"step         batch {p.batch_size} x {p.seq_len} ({rows} rows per batch shard), "
        f"{p.micro_batches} micro-batch(es), remat {p.remat}, attention {p.attention}"
        + (", DoReMi proxy + reference" if p.doremi else ""),
        f"memory/{chip}  arguments {g(p.argument_bytes)}, temporaries {g(p.temp_bytes)}, outputs "
        f"{g(p.output_bytes)}, aliased {g(p.alias_bytes)}",
        f"peak/{chip}    {g(p.peak_bytes)} of {g(p.hbm_bytes_per_chip)} HBM: "
        + ("fits" if p.fits else "does NOT fit") + (f" (compiler: {p.refused})" if p.refused else ""),
        f"FLOPs/{chip}   {p.flops_per_chip:.3e} per step (6N + 12LTd per token)",
        "collectives  " + (", ".join(f"{k} {v}" for k, v in p.collectives.items() if v) or "none")
        + " (ops in the program; a scanned layer's once)",
    ]
    if p.step_time_bound_s is not None:
        lines.append(f"roofline     {p.bytes_accessed_per_chip / 1e9:.1f} GB HBM traffic per {chip}; "
                     f"step >= {p.step_time_bound_s * 1e3:.1f} ms, MFU <= {100 * p.mfu_ceiling:.0f}%")
    elif topo.platform == "gpu":
        lines.append("roofline     not available: the GPU compiler reports no costs without a device")
    if not p.fits:
        lines.append("hint         cpt-jax compile --fit batch finds the largest batch that fits; "
                     "model.remat=full or dots, train.vocab_chunk and more chips lower the peak")
    lines.append(f"compiled in  {p.compile_s:.1f} s")
    return lines
