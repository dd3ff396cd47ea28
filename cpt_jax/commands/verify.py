"""`cpt-jax verify PATH`: check checkpoints against the digests recorded when they were saved."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="check a run's checkpoints (or one step, or a params checkpoint) for damage",
        description="Reads every array of every complete checkpoint step of a run (or of one step "
        "or params checkpoint) and compares it with the digest recorded when it was saved. One "
        "line per checkpoint; exit 0 when all match, 1 when any does not.")
    p.add_argument("path", help="run directory, RUN/checkpoints/<step>, or params checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpt_jax.verify import verify

    return 1 if verify(args.path) else 0
