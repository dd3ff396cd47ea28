"""`cpt-jax eval`: zero-shot multiple choice and per-domain held-out loss of one checkpoint."""

from __future__ import annotations

import argparse
import os

from cpt_jax import config as config_lib
from cpt_jax import storage
from cpt_jax.errors import UserError
from cpt_jax.run_dir import CONFIG


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="zero-shot tasks (PIQA, ARC, SciQ, HellaSwag, WinoGrande, ...) and per-domain loss"
    )
    p.add_argument("--checkpoint", required=True,
                   help="params checkpoint, run dir, RUN/checkpoints/<step>, or Hugging Face dir")
    p.add_argument("--config", default=None,
                   help="experiment file or run config.json for the data (default: the run's own "
                        "config.json when --checkpoint is a run or step dir)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated task names (NAME or NAME:VARIANT) or JSONL paths; 'none' "
                        "for no tasks (default: eval.tasks)")
    p.add_argument("--domains", default=None,
                   help="comma-separated domains for held-out loss; 'none' to skip (default: all "
                        "domains of the config's data)")
    p.add_argument("--limit", type=int, default=None, help="first N examples per task (default: eval.limit)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default: eval.batch_size)")
    p.add_argument("--data-dir", default=None, help="assets dir (default $CPT_JAX_HOME or ~/.cache/cpt_jax)")
    p.add_argument("--tokenizer", default=None, help="a tokenizer.json (default: Pythia's, from the assets)")
    p.add_argument("--harness", default=None, metavar="TASKS",
                   help="comma-separated lm-evaluation-harness tasks or groups, run in process on the "
                        "checkpoint (needs the 'harness' extra); built-in --tasks then default to none")
    p.add_argument("--harness-include", default=None, metavar="DIR",
                   help="a folder of your own harness YAML tasks (lm-eval's include_path)")
    p.add_argument("--harness-fewshot", type=int, default=None, metavar="N",
                   help="few-shot examples per prompt (lm-eval's num_fewshot; default: each task's own)")
    p.add_argument("--harness-out", default=None, metavar="PATH",
                   help="write lm-eval's results JSON here, as lm-eval writes it")
    p.add_argument("--out", default=None,
                   help="write the results JSON here (default: RUN/eval.json for a run dir)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="evaluate even weights holding NaN or inf (refused by default)")
    p.set_defaults(func=run, takes_config=True)


def run(args: argparse.Namespace) -> int:
    from cpt_jax import configure  # here: jax stays unloaded until a verb runs (see commands/doremi.py)
    from cpt_jax.eval import runner

    run = runner.run_of(args.checkpoint)
    cfg = None
    if args.config:
        cfg = configure.load_config(args.config, args.config_overrides)
    elif run is not None:
        cfg = configure.load_config(os.fspath(run.file(CONFIG)), args.config_overrides)
    elif args.config_overrides:
        cfg = config_lib.defaults()
        config_lib.apply_overrides(cfg, args.config_overrides)
        configure.validate(cfg)
    defaults = (cfg if cfg is not None else config_lib.defaults()).eval
    tasks = args.tasks if args.tasks is not None else ("none" if args.harness else defaults.tasks)
    limit = args.limit if args.limit is not None else defaults.limit
    batch_size = args.batch_size if args.batch_size is not None else defaults.batch_size
    if limit < 0:
        raise UserError(f"--limit must be >= 0 (0 = all), got {limit}")
    if batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    if args.domains not in (None, "none") and cfg is None:
        raise UserError("--domains needs --config (the data to take held-out batches from)")
    if (args.harness_include or args.harness_out or args.harness_fewshot is not None) and not args.harness:
        raise UserError("--harness-include, --harness-fewshot and --harness-out need --harness TASKS")
    if args.harness_fewshot is not None and args.harness_fewshot < 0:
        raise UserError(f"--harness-fewshot must be >= 0, got {args.harness_fewshot}")
    harness = None
    if args.harness:
        from cpt_jax.eval import harness as harness_lib

        harness_lib.require()  # before the weights load
        harness = {"tasks": harness_lib.parse_tasks(args.harness), "include": args.harness_include,
                   "fewshot": args.harness_fewshot}
    with_domains = cfg is not None and (args.config or run is not None)
    result = runner.evaluate_checkpoint(
        args.checkpoint, cfg if with_domains else None, tasks, args.domains, limit, batch_size,
        args.data_dir, args.tokenizer, harness=harness, allow_nonfinite=args.allow_nonfinite)
    raw = result.pop("harness_raw", None)
    if args.harness_out and raw is not None:
        from cpt_jax.eval import harness as harness_lib

        harness_lib.write_results(args.harness_out, raw)
        print(f"wrote {args.harness_out}")
    print(runner.format_table(result))
    out = args.out
    if out is None and run is not None and storage.path(args.checkpoint) == run.root:
        out = os.fspath(run.file(runner.RESULT_NAME))
    if out:
        storage.write_json(out, result)
        print(f"wrote {out}")
    return 0
