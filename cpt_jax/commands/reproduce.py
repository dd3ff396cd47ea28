"""`cpt-jax reproduce`: re-measure the papers' findings at CPU scale into docs/reproductions.md.

The reproductions live in a checkout's ``experiments/repro/`` (beside ``configs/repro_*.py``),
not in the installed package: this command finds the checkout and puts it on ``sys.path``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

import cpt_jax
from cpt_jax.errors import UserError

NO_CHECKOUT = ("cpt-jax reproduce runs from a cpt-jax checkout (it needs experiments/repro/ and "
               "configs/): clone the repository and run `bash scripts/reproduce.sh` in it")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="re-run the papers' headline experiments at CPU scale "
                                         "and write docs/reproductions.md")
    p.add_argument("--parts", default="all",
                   help="comma-separated parts to run (default all: rewarm,replay,doremi,lawa,dcpt,"
                        "vocab,long_context)")
    p.add_argument("--size", choices=("full", "tiny", "gpu"), default="full",
                   help="full: the documented CPU scale; tiny: a few steps (pipeline check); gpu: "
                        "Pythia-70m's shape for one accelerator")
    p.add_argument("--data", default="data/ten", help="DATA_DIR of `cpt-jax corpus` (all ten domains)")
    p.add_argument("--runs", default="runs/repro", help="where the runs go (finished runs are skipped)")
    p.add_argument("--out", default="docs/reproductions.md", help="the report to write")
    p.add_argument("--images", default="docs/images", help="folder for the plots")
    p.set_defaults(func=run)


def checkout_root(cwd: Path | None = None) -> Path:
    """The cpt-jax checkout holding ``experiments/repro``: the working directory, else the one
    the imported ``cpt_jax`` was installed from (an editable install); UserError when neither."""
    for root in (Path(cwd or Path.cwd()), Path(cpt_jax.__file__).resolve().parents[1]):
        if (root / "experiments" / "repro" / "__init__.py").is_file() and (root / "configs").is_dir():
            return root.resolve()
    raise UserError(NO_CHECKOUT)


def experiments_package(cwd: Path | None = None) -> ModuleType:
    """``experiments.repro`` of the checkout, importable from then on (also by its configs)."""
    root = str(checkout_root(cwd))
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("experiments.repro")


def run(args: argparse.Namespace) -> int:
    repro = experiments_package()
    from experiments.repro import corpus_bpe, report, settings
    from experiments.repro.common import Context, compilation_cache, timed

    parts = list(repro.PARTS) if args.parts == "all" else [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in repro.PARTS]
    if unknown:
        raise UserError(f"--parts: unknown part {unknown[0]!r} (parts: {', '.join(repro.PARTS)})")
    if not (Path(args.data) / "manifest.json").is_file():
        raise UserError(f"--data {args.data}: no manifest.json (build it: cpt-jax corpus --out {args.data})")
    data = args.data
    vocab = settings.BPE_VOCAB[args.size]
    if vocab:  # the corpus re-tokenized with a small BPE trained on it (once)
        data = corpus_bpe.retokenize(args.data, f"{args.data.rstrip('/')}_bpe{vocab}", vocab)
    ctx = Context(data_dir=data, runs=Path(args.runs), images=Path(args.images), size=args.size)
    with compilation_cache(ctx.runs / "jax_cache"):
        for part in parts:
            print(f"== reproduce {part} ==", flush=True)
            module = importlib.import_module(f"experiments.repro.{part}")
            section = timed(lambda module=module: module.run(ctx), ctx.part_dir(part))
            section.save(ctx.part_dir(part))
            print(f"{part}: {section.verdict} ({section.minutes:.1f} min)", flush=True)
    command = "cpt-jax reproduce" + ("" if args.size == "full" else f" --size {args.size}")
    path = report.write(ctx.runs, Path(args.out), command)
    print(f"report: {path}")
    return 0
