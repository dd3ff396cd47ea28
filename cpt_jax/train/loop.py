"""The training run: initialise or resume, step, log, evaluate, checkpoint, stop cleanly.

``run(cfg)`` starts from (in this order of precedence)

1. the newest complete checkpoint under ``RUN/checkpoints`` (resume: same params, optimizer
   state, extras and step; the data pipeline is a pure function of the step, so the run
   continues bit for bit as if it had never stopped). ``train.resume.open_run`` first takes
   the run dir's lease, refuses a config that changes what the checkpoint means, and returns
   at once when the run already finished;
2. ``train.init_from`` (a params checkpoint, run, step or Hugging Face directory): those
   weights with a fresh optimizer state and step 0 -- the continual-pretraining start;
3. Pythia's initialisation with ``seed``

(``train.state.start_state``). The step is compiled before the first batch; after each step
``train.hooks`` fetches the previous step's metrics, writes the log line, saves the checkpoint
and evaluates, each on its own cadence.

SIGTERM / SIGHUP / SIGINT (``train.signals``): the current step finishes, a checkpoint is saved,
the run returns a summary with ``"interrupted"`` set to the signal (the ``train`` verb exits 0
after SIGTERM, 130 after SIGINT); a second signal exits at once. A step with a non-finite
loss or gradient is never applied (``train.step``); past ``optim.skip_nonfinite`` such steps the
run stops with a ``UserError`` naming the newest checkpoint, whose params are finite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import jax

from cpt_jax import checks, sharding, storage, vocab
from cpt_jax.config import to_dict
from cpt_jax.errors import UserError
from cpt_jax.eval.perplexity import token_bytes_for
from cpt_jax.lawa_online import OnlineLawa
from cpt_jax.model import pythia
from cpt_jax.model.checkpoint import config_to_dict
from cpt_jax.optim import make_optimizer
from cpt_jax.run_dir import MODEL, SUMMARY, RunDir, run_record
from cpt_jax.schedules import make_schedule
from cpt_jax.train import banner
from cpt_jax.train.checkpoint import RunCheckpoints
from cpt_jax.train.hooks import (Cadence, CheckpointHook, EvalHook, Evaluator, Hooks, LogHook,
                                 MetricsDrain)
from cpt_jax.train.metrics import MetricsWriter, Window, flops_per_token, peak_flops
from cpt_jax.train.resume import OpenedRun, open_run
from cpt_jax.train.signals import StopFlag
from cpt_jax.train.source import TrainSource, as_source
from cpt_jax.train.state import (TrainState, abstract_state, check_init_from, start_state,
                                 state_shardings)
from cpt_jax.train.step import NextTokenObjective, Objective, make_train_step


def check_section(train: Any) -> None:
    """The ``train`` section: sizes, the micro-batch split, the log/eval cadence; one ``UserError``."""
    for name in ("steps", "batch_size", "seq_len", "micro_batches", "log_every", "eval_batches"):
        checks.positive(f"train.{name}", train[name])
    if train.batch_size % train.micro_batches:
        raise UserError(
            f"train.batch_size {train.batch_size} is not divisible by train.micro_batches {train.micro_batches}")
    checks.at_least_zero("train.vocab_chunk", train.vocab_chunk, "0 = full logits")
    checks.positive("train.lease_timeout_s", train.lease_timeout_s)
    checks.at_least_zero("train.eval_every", train.eval_every, "0 = only at the end")
    eval_steps(train)


def eval_steps(train: Any) -> frozenset[int]:
    """The steps of ``train.eval_steps`` (each in 1 .. train.steps); one line when malformed."""
    text = str(train.eval_steps).strip()
    try:
        steps = frozenset(int(x) for x in text.split(",")) if text else frozenset()
    except ValueError:
        raise UserError(f"train.eval_steps must be comma-separated step numbers, got {text!r}") from None
    outside = sorted(x for x in steps if not 0 < x <= train.steps)
    if outside:
        raise UserError(f"train.eval_steps: step {outside[0]} is outside 1..train.steps ({train.steps})")
    return steps


def _pipeline() -> Any:
    try:
        from cpt_jax.data import pipeline
    except ImportError as err:
        raise UserError(f"the data pipeline is not available: {err}") from None
    return pipeline


def _train_data(cfg: Any, catalog: Any = None) -> Any:
    """The configured ``TrainData`` of this process (reading ``catalog`` when given)."""
    return _pipeline().TrainData.from_config(cfg, jax.process_index(), jax.process_count(), catalog=catalog)


def run(
    cfg: Any,
    objective: Objective | None = None,
    *,
    trainable: Any = None,
    data: Any = None,
    eval_sets: dict[str, list[dict]] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` to ``train.steps`` under ``cfg.run_dir``; returns the summary dict.

    ``objective`` defaults to next-token cross-entropy; ``trainable`` is the optimizer's
    trainable mask (see ``cpt_jax.optim``); ``data`` / ``eval_sets`` replace the configured
    pipeline (a ``TrainSource``, or anything with ``.domains`` and ``.batch(step)``; and
    ``{domain: [batch]}``).
    """
    sharding.maybe_initialize_distributed(cfg.mesh)
    wall0 = time.time()
    plan = _plan(cfg, objective, trainable, data)
    with storage.Deadline(cfg.storage.timeout_s, f"opening the run dir {cfg.run_dir}"):
        opened = open_run(cfg)
    try:
        if opened.finished is not None:
            return opened.finished
        return _train(cfg, plan, opened, eval_sets, wall0)
    finally:
        opened.close()


@dataclasses.dataclass
class _Plan:
    """Everything about a run that is known before touching its directory."""

    mesh: Any
    mcfg: pythia.PythiaConfig
    data: TrainSource
    objective: Objective
    schedule: Any
    tx: Any
    abstract: TrainState
    shard: Any
    catalog: Any  # data.pipeline.Catalog of the configured data; None until eval sets need it


def _plan(cfg: Any, objective: Objective | None, trainable: Any, data: Any) -> _Plan:
    """Mesh, model, data, objective, optimizer and the state's shapes and shardings."""
    b, m, total = cfg.train.batch_size, cfg.train.micro_batches, cfg.train.steps
    mesh = sharding.make_mesh(cfg.mesh)
    sharding.check_batch(mesh, b, m)
    mcfg = pythia.PythiaConfig.from_config(cfg.model)

    catalog = _pipeline().Catalog.from_config(cfg) if data is None else None  # one per run
    data = as_source(_train_data(cfg, catalog) if data is None else data)
    if objective is None:
        objective = NextTokenObjective(mcfg, len(data.domains), cfg.train.vocab_chunk)
    schedule = make_schedule(cfg.schedule, cfg.optim.peak_lr, total)
    abstract_params = jax.eval_shape(lambda: pythia.init_params(mcfg, jax.random.key(0)))
    if trainable is None and cfg.train.train_only_new_rows:  # vocabulary expansion, phase 1
        rows = vocab.load_new_rows(cfg.train.train_only_new_rows)
        if max(rows, default=-1) >= mcfg.vocab_size:
            raise UserError(f"train.train_only_new_rows: row {max(rows)} is outside "
                            f"model.vocab_size = {mcfg.vocab_size}")
        trainable = vocab.embedding_only_mask(abstract_params, rows)
    tx = make_optimizer(cfg.optim, schedule, trainable)
    abstract = abstract_state(mcfg, tx, objective, ema=cfg.lawa.ema > 0)
    shard = state_shardings(abstract, mesh)  # UserError for indivisible dims, before compiling
    if cfg.train.init_from and RunDir(cfg.run_dir).latest_step() is None:  # not a resume
        check_init_from(cfg.train.init_from, abstract_params, mcfg)
    return _Plan(mesh, mcfg, data, objective, schedule, tx, abstract, shard, catalog)


def _train(cfg: Any, plan: _Plan, opened: OpenedRun, eval_sets: Any, wall0: float) -> dict[str, Any]:
    """Start (resume / init_from / fresh), compile, then step with the hooks until done or stopped."""
    t, b, main = cfg.train.seq_len, cfg.train.batch_size, jax.process_index() == 0
    run, timeout = opened.run, cfg.storage.timeout_s  # each storage step: past it, exit 75
    ckpts = RunCheckpoints(run, cfg.checkpoint)
    state, resumed = start_state(plan, run, opened.resumed, ckpts, init_from=cfg.train.init_from,
                                 seed=cfg.seed, timeout_s=timeout)
    banner.show(cfg, plan, opened)  # what this run does, before its first step
    lawa = OnlineLawa.from_config(cfg.lawa, cfg.run_dir)  # online LAWA (docs/lawa.md); None when off
    if lawa is not None and resumed is not None:
        lawa.load_state(ckpts.restore_host_item(resumed, "lawa") or {})
    record = {"run": run_record(to_dict(cfg)), "model": config_to_dict(plan.mcfg)}  # in each step
    if main:
        run.write_json(MODEL, record["model"])
    writer = MetricsWriter(run.root, main, cfg.logging.tensorboard, cfg.train.progress,
                           keep_until=resumed, config=to_dict(cfg))
    train_step = make_train_step(plan.objective, plan.tx, plan.schedule, plan.shard, plan.mesh,
                                 cfg.train.micro_batches, cfg.lawa.ema)
    # prints its memory and stops if it cannot fit
    banner.compile_step(train_step, state, sharding.abstract_batch(plan.mesh, b, t))
    evaluator = _evaluator(cfg, plan, writer, lawa, eval_sets, run.root)
    start = int(jax.device_get(state.step))
    checkpoint = CheckpointHook(Cadence(cfg.checkpoint.every, frozenset({cfg.train.steps})), ckpts,
                                plan.data, writer, record, tokens_per_step=b * t, wall0=wall0,
                                timeout_s=timeout, last_saved=resumed, lawa=lawa)
    log = _log_hook(cfg, plan, writer)
    hooks = Hooks(drain=MetricsDrain(log.window, cfg.optim.skip_nonfinite, lambda: checkpoint.last_saved),
                  log=log, checkpoint=checkpoint, stop=StopFlag(start), lawa=lawa,
                  evaluate=EvalHook(Cadence(cfg.train.eval_every, eval_steps(cfg.train)), evaluator,
                                    cfg.train.steps))
    hooks.stop.install()
    if resumed is None and cfg.train.init_from and hooks.evaluate.cadence.ever:
        evaluator(0, state)  # the starting point of a continuation: learning and forgetting start here
    done, interrupted = _steps(cfg, plan, state, train_step, hooks, start, run)
    with storage.Deadline(timeout, f"finishing the checkpoint writes under {run.checkpoints}"):
        ckpts.close()
    summary = {"run_dir": str(run), "steps": done, "tokens": done * b * t,
               "wall_time_s": time.time() - wall0, "final_train_loss": hooks.drain.last_loss,
               "final_eval": hooks.evaluate.last, "resumed_from": resumed,
               "last_checkpoint": hooks.checkpoint.last_saved, "interrupted": interrupted,
               "devices": jax.device_count(), "mesh": dict(plan.mesh.shape)}
    if main:
        run.write_json(SUMMARY, summary)
    return summary


def _steps(cfg: Any, plan: _Plan, state: TrainState, train_step: Any, hooks: Hooks, start: int,
           run: RunDir) -> tuple[int, str | None]:
    """Steps ``start + 1 .. train.steps`` with the hooks after each, then the final eval;
    ``(last step done, the signal it stopped for or None)``. On any error the newest
    checkpoint write is finished first; the data source, signals and metrics always close."""
    total, b, timeout = cfg.train.steps, cfg.train.batch_size, cfg.storage.timeout_s
    done, interrupted = start, None
    source = plan.data.iterator(start, total)
    try:
        for s in range(start, total):
            batch = sharding.global_batch(next(source), plan.mesh, b)
            state, metrics = train_step(state, batch)
            done = s + 1
            interrupted = hooks.after_step(done, state, metrics)
            if interrupted:
                break
        if interrupted is None and done == total:
            hooks.evaluate(done, state)
    except BaseException:
        with storage.Deadline(timeout, "finishing the last checkpoint write"), contextlib.suppress(UserError):
            hooks.checkpoint.checkpoints.wait()  # leave the last good checkpoint complete on disk
        raise
    finally:
        getattr(source, "close", lambda: None)()  # stops prefetch threads / workers
        hooks.stop.restore()
        with storage.Deadline(timeout, f"writing the metrics of {run}"):
            hooks.log.writer.close()
    return done, interrupted


def _log_hook(cfg: Any, plan: _Plan, writer: MetricsWriter) -> LogHook:
    """The train-metrics line every ``train.log_every`` steps and at the last, with MFU."""
    t = cfg.train
    n_params = pythia.count_params(plan.abstract.params)
    peak = peak_flops(jax.devices()[0])
    return LogHook(Cadence(t.log_every, frozenset({t.steps})), writer, Window(), list(plan.data.domains),
                   t.steps, t.batch_size * t.seq_len, flops_per_token(plan.mcfg, t.seq_len, n_params),
                   peak * jax.device_count() if peak else None)


def _evaluator(cfg: Any, plan: _Plan, writer: MetricsWriter, lawa: Any, sets: Any, run_root: Any
               ) -> Evaluator:
    """Held-out sets of the run's domains (``sets`` replaces them), bits per byte where the
    data dir has a byte table, the LAWA window / EMA and the ``eval.harness_tasks``."""
    if sets is None:
        sets = _configured_eval_sets(cfg, plan)
    harness = None
    if cfg.eval.harness_tasks:
        from cpt_jax.eval.harness import TrainingEval

        harness = TrainingEval(cfg.eval, plan.mcfg, run_root)
    rep = sharding.replicated(plan.mesh)
    return Evaluator(writer, plan.mcfg, sets, token_bytes_for(cfg.data) if sets else None,
                     lambda a: sharding.put_global(a, rep), lawa, harness)


def _configured_eval_sets(cfg: Any, plan: _Plan) -> dict[str, list[dict]] | None:
    """``train.eval_batches`` held-out batches of each training domain (None without the pipeline)."""
    try:
        from cpt_jax.data.pipeline import Catalog, eval_sets
    except ImportError:
        return None
    catalog = plan.catalog or Catalog.from_config(cfg)
    return eval_sets(cfg.train, catalog, list(plan.data.domains))
