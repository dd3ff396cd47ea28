"""The `cpt-jax` command: a thin dispatcher over `cpt_jax.commands.<verb>` modules.

Each command module defines ``register(subparsers)``, which adds its sub-parser and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` (and returning an exit code
or None). Heavy imports (jax, torch) happen inside those callables so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from cpt_jax.commands import (
    assets,
    average,
    convert,
    corpus,
    dcpt,
    doremi,
    experiment,
    generate,
    model_info,
    report,
    reproduce,
    schedule,
    sweep,
    tokenize,
    train,
    verify,
    vocab,
)
from cpt_jax.commands import compile as compile_verb  # the module names shadow builtins
from cpt_jax.commands import eval as eval_verb
from cpt_jax.errors import UserError

# the verbs, in the order `--help` lists them
COMMANDS = (model_info, assets, tokenize, convert, schedule, average, corpus, train, compile_verb,
            eval_verb, generate, experiment, sweep, report, dcpt, doremi, vocab, reproduce, verify)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2); sub-parsers inherit it."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cpt-jax", description="Continual pretraining of Pythia models in JAX."
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    return parser


def join_overrides(argv: list[str]) -> list[str]:
    """``--config.a.b VALUE`` (space-separated, as ml-collections' config_flags accepts) as
    ``--config.a.b=VALUE``; a VALUE may start with one ``-`` (a negative number)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if (arg.startswith("--config.") and "=" not in arg and i + 1 < len(argv)
                and not argv[i + 1].startswith("--")):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = join_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    # `--config.a.b=value` overrides are collected by the verbs that take a config.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.config_overrides = [a for a in extra if a.startswith("--config.")]
    args.argv = argv  # what a supervised `train` runs again as its child
    if args.config_overrides and not getattr(args, "takes_config", False):
        parser.error(f"'{args.verb}' takes no --config.* overrides")
    try:
        code = args.func(args)
    except (UserError, OSError, EOFError) as err:
        # storage or a peer unreachable: a temporary failure (75) that a restart loop retries
        temporary = isinstance(err, (ConnectionError, TimeoutError))
        remote = sorted({a.split("=", 1)[-1] for a in argv if "gs://" in a})  # what it was reading
        at = f" at {', '.join(remote)}" if remote else ""
        tail = f" (storage{at} did not answer: a temporary failure, exit 75)" if temporary else ""
        print(f"cpt-jax {args.verb}: error: {one_line(err)}{tail}", file=sys.stderr)
        return 75 if temporary else 2
    return int(code or 0)


def one_line(err: BaseException) -> str:
    """The error as one line; an OS error (missing file, read-only or full disk, a path that is
    a file where a directory is needed, a truncated ``.gz``) names its path and cause."""
    if isinstance(err, OSError) and not isinstance(err, UserError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror}"
    elif isinstance(err, (UserError, OSError)):
        text = str(err)
    else:
        text = f"{type(err).__name__}: {err}"  # EOFError: a compressed file ends early
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
