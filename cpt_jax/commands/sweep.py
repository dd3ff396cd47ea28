"""`cpt-jax sweep`: run a grid of runs (finished ones skipped) and collect results.csv."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid of runs and collect their losses into one CSV")
    p.add_argument("--config", required=True, help="file defining get_config, get_grid, apply")
    p.add_argument("--print-commands", action="store_true",
                   help="print one `cpt-jax train` command per run instead of running them")
    p.set_defaults(func=run, takes_config=True)


def run(args: argparse.Namespace) -> int:
    from cpt_jax import sweep  # here: jax stays unloaded until a verb runs (see commands/doremi.py)

    shared, runs = sweep.load_sweep(args.config, args.config_overrides)
    if args.print_commands:
        print("\n".join(sweep.commands(args.config, args.config_overrides, shared, runs)))
        return 0
    path = sweep.run_sweep(shared, runs)
    print(f"{len(runs)} runs -> {path}")
    return 0
