"""`cpt-jax reproduce`: re-measure the papers' findings at CPU scale into docs/reproductions.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from cpt_jax.errors import UserError
from cpt_jax.repro import PARTS, report
from cpt_jax.repro.common import Context, timed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="re-run the papers' headline experiments at CPU scale "
                                         "and write docs/reproductions.md")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run (default all: {','.join(PARTS)})")
    p.add_argument("--size", choices=("full", "tiny"), default="full",
                   help="full: the documented CPU scale; tiny: a few steps (pipeline check)")
    p.add_argument("--data", default="data/ten", help="DATA_DIR of `cpt-jax corpus` (all ten domains)")
    p.add_argument("--runs", default="runs/repro", help="where the runs go (finished runs are skipped)")
    p.add_argument("--out", default="docs/reproductions.md", help="the report to write")
    p.add_argument("--images", default="docs/images", help="folder for the plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"--parts: unknown part {unknown[0]!r} (parts: {', '.join(PARTS)})")
    if not (Path(args.data) / "manifest.json").is_file():
        raise UserError(f"--data {args.data}: no manifest.json (build it: cpt-jax corpus --out {args.data})")
    ctx = Context(data_dir=args.data, runs=Path(args.runs), images=Path(args.images), size=args.size)
    modules = _modules()
    for part in parts:
        print(f"== reproduce {part} ==", flush=True)
        section = timed(lambda module=modules[part]: module.run(ctx), ctx.part_dir(part))
        section.save(ctx.part_dir(part))
        print(f"{part}: {section.verdict} ({section.minutes:.1f} min)", flush=True)
    command = "cpt-jax reproduce" + ("" if args.size == "full" else f" --size {args.size}")
    path = report.write(ctx.runs, Path(args.out), command)
    print(f"report: {path}")
    return 0


def _modules() -> dict:
    """Each part's module (imported here: they import jax)."""
    from cpt_jax.repro import dcpt, doremi, lawa, long_context, replay, rewarm, vocab

    modules = {"rewarm": rewarm, "replay": replay, "doremi": doremi, "lawa": lawa, "dcpt": dcpt,
               "vocab": vocab, "long_context": long_context}
    assert tuple(modules) == PARTS, "PARTS and the part modules disagree"
    return modules
