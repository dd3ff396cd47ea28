"""`cpt-jax experiment`: run every run of a multi-run experiment file, then compare them."""

from __future__ import annotations

import argparse
from pathlib import Path

from cpt_jax.checks import comma_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment", help="run an experiment file's runs in order (finished ones are skipped)")
    p.add_argument("--config", required=True, help="file defining get_config() and get_runs(cfg)")
    p.add_argument("--report", default="", help="report dir (default: RUN_DIR/report)")
    p.set_defaults(func=run, takes_config=True)


def run(args: argparse.Namespace) -> int:
    from cpt_jax import experiment  # here: jax stays unloaded until a verb runs (see commands/doremi.py)
    from cpt_jax.eval import report

    shared, runs = experiment.load_experiment(args.config, args.config_overrides)
    summaries = experiment.run_experiment(shared, runs)
    upstream = comma_list(shared.data.upstream)
    downstream = comma_list(shared.data.downstream)
    rows = experiment.learning_forgetting(summaries, runs, upstream, downstream)
    out = Path(args.report or Path(shared.run_dir) / "report")
    out.mkdir(parents=True, exist_ok=True)
    if rows and upstream and downstream:
        table = experiment.format_table(rows)
        (out / "learning_forgetting.md").write_text(table + "\n")
        print(f"\nLearning (downstream: {', '.join(downstream)}) vs forgetting "
              f"(upstream: {', '.join(upstream)}), held-out loss:\n{table}")

    run_dirs = [str(Path(shared.run_dir) / r["name"]) for r in runs]
    path = report.write_report(run_dirs, str(out))
    print(f"\nreport: {path}")
    return 0
