"""`cpt-jax doremi`: reference -> DoReMi proxy -> domain weights -> main run vs baseline."""

from __future__ import annotations

import argparse

from cpt_jax.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doremi",
        help="DoReMi domain weights: reference, Group-DRO proxy, main run and baseline",
        description="Runs the stages of DoReMi (Xie et al. 2023) under RUN_DIR; finished stages "
        "are skipped, interrupted ones resume (docs/doremi.md).",
    )
    p.add_argument("--config", required=True, help="experiment config (see configs/doremi_demo.py)")
    p.add_argument("--stage", default="all",
                   help="run one stage (reference, proxy, main, baseline or report, with what it "
                   "needs) instead of all")
    p.set_defaults(func=run, takes_config=True)


def run(args: argparse.Namespace) -> int:
    # the library is imported here, not at the top: `cpt-jax` imports every verb, and jax must
    # not be loaded before `cpt-jax compile` has put its compilers on the path
    from cpt_jax import configure
    from cpt_jax.doremi_workflow import STAGES, run_workflow

    if args.stage not in STAGES:
        raise UserError(f"--stage {args.stage!r} is not one of {', '.join(STAGES)}")
    cfg = configure.load(args.config, args.config_overrides)
    run_workflow(cfg, args.stage)
    return 0
