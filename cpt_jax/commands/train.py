"""`cpt-jax train`: run (or resume) the training of a config under its run_dir."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or continue-pretrain a model (resumes RUN_DIR/checkpoints if present)",
        description="Train under cfg.run_dir; a later call with the same run_dir resumes from "
        "its newest checkpoint. Exit code 0 when done or stopped by SIGTERM (checkpoint saved), "
        "130 when stopped by SIGINT (checkpoint saved), 2 for bad input or a non-finite loss.",
    )
    p.add_argument("--config", required=True, help="experiment file defining get_config()")
    p.add_argument("--force", action="store_true",
                   help="train again a run that finished but whose final checkpoint is gone")
    p.set_defaults(func=run, takes_config=True)


def run(args: argparse.Namespace) -> int:
    from cpt_jax import configure
    from cpt_jax.train import loop, supervisor

    cfg = configure.load(args.config, args.config_overrides)
    if args.force:
        cfg.train.force = True
    mesh = supervisor.mesh_to_watch(cfg.mesh)
    if mesh is not None:  # several processes: a dead or missing peer is one line, exit 75
        return supervisor.supervise(args.argv, float(mesh.shutdown_timeout_s))
    summary = loop.run(cfg)
    import jax

    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2, default=float))
    return 130 if summary.get("interrupted") == "SIGINT" else 0
