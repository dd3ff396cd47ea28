"""`cpt-jax report`: report.md and PNG plots comparing training runs."""

from __future__ import annotations

import argparse

from cpt_jax.eval.report import write_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="report.md + PNG plots (learning vs forgetting, LR, DoReMi, LAWA) for runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training run directories (metrics.jsonl)")
    p.add_argument("--out", required=True, help="output directory for report.md and the PNGs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = write_report(args.runs, args.out)
    print(f"wrote {path}")
    return 0
