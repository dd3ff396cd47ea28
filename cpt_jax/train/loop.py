"""The training run: initialise or resume, step, log, evaluate, checkpoint, stop cleanly.

``run(cfg)`` starts from (in this order of precedence)

1. the newest complete checkpoint under ``RUN/checkpoints`` (resume: same params, optimizer
   state, extras and step; the data pipeline is a pure function of the step, so the run
   continues bit for bit as if it had never stopped). ``train.resume.open_run`` first takes
   the run dir's lease, refuses a config that changes what the checkpoint means, and returns
   at once when the run already finished;
2. ``train.init_from`` (a params checkpoint, run, step or Hugging Face directory): those
   weights with a fresh optimizer state and step 0 -- the continual-pretraining start;
3. Pythia's initialisation with ``seed``.

SIGTERM / SIGHUP / SIGINT (``train.signals``): the current step finishes, a checkpoint is saved,
the run returns a summary with ``"interrupted"`` set to the signal (the ``train`` verb exits 0
after SIGTERM, 130 after SIGINT); a second signal exits at once. A step with a non-finite
loss or gradient is never applied (``train.step``); past ``optim.skip_nonfinite`` such steps the
run stops with a ``UserError`` naming the newest checkpoint, whose params are finite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from typing import Any

import jax
import numpy as np

from cpt_jax import checks, sharding, storage, vocab
from cpt_jax.config import to_dict
from cpt_jax.errors import UserError
from cpt_jax.eval.perplexity import evaluate, to_metrics, token_bytes_for
from cpt_jax.lawa_online import OnlineLawa
from cpt_jax.model import pythia
from cpt_jax.model.checkpoint import config_to_dict, load_params, source_config
from cpt_jax.optim import make_optimizer
from cpt_jax.run_dir import MODEL, SUMMARY, RunDir, run_record
from cpt_jax.schedules import make_schedule
from cpt_jax.train import banner
from cpt_jax.train.checkpoint import RunCheckpoints
from cpt_jax.train.metrics import MetricsWriter, Window, flops_per_token, peak_flops
from cpt_jax.train.resume import OpenedRun, open_run, restore_newest
from cpt_jax.train.signals import StopFlag
from cpt_jax.train.source import TrainSource, as_source
from cpt_jax.train.state import TrainState, abstract_state, fresh_state, state_shardings
from cpt_jax.train.step import NextTokenObjective, Objective, make_train_step

# architecture a train.init_from checkpoint must share with cfg.model (num_heads is not implied
# by any tensor's shape; the context and rotary base may change on purpose)
_ARCH_FIELDS = ("num_heads", "use_parallel_residual", "rotary_pct", "hidden_act", "attention_bias")


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


def _train_data(cfg: Any) -> Any:
    try:
        from cpt_jax.data.pipeline import TrainData
    except ImportError as err:
        raise UserError(f"the data pipeline is not available: {err}") from None
    return TrainData(cfg, jax.process_index(), jax.process_count())


def _eval_sets(cfg: Any, domains: list[str]) -> dict[str, list[dict]] | None:
    try:
        from cpt_jax.data.pipeline import eval_sets
    except ImportError:
        return None
    return eval_sets(cfg, domains)


def _check_init_from(path: str, abstract: Any, mcfg: pythia.PythiaConfig) -> None:
    """``train.init_from`` must hold the configured architecture (its model.json or HF
    config.json, then every parameter's shape), checked before anything is read or written."""
    src = source_config(path)
    for f in _ARCH_FIELDS:
        if getattr(src, f) != getattr(mcfg, f):
            raise UserError(
                f"train.init_from {path}: model.{f} is {getattr(src, f)!r} there but "
                f"{getattr(mcfg, f)!r} in the config"
            )
    expected = jax.eval_shape(lambda: pythia.init_params(src, jax.random.key(0)))
    flat_a = jax.tree_util.tree_flatten_with_path(abstract)[0]
    flat_p = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    for key, leaf in flat_a:
        name = "/".join(str(getattr(k, "key", k)) for k in key)
        if key not in flat_p or tuple(flat_p[key].shape) != tuple(leaf.shape):
            got = tuple(flat_p[key].shape) if key in flat_p else "missing"
            raise UserError(
                f"train.init_from {path}: parameter {name} is {got}, the config's model needs "
                f"{tuple(leaf.shape)}"
            )


def _init_params_from(path: str, abstract: Any, shardings: Any) -> Any:
    """Weights of ``train.init_from`` (checked by ``_check_init_from``), restored straight into
    ``shardings`` (each process reads its own shards) and cast to the model's dtypes."""
    params, _ = load_params(path, shardings, hint="train.init_from needs finite weights")
    if not all(isinstance(x, jax.Array) and x.sharding == s for x, s in
               zip(jax.tree.leaves(params), jax.tree.leaves(shardings))):  # a Hugging Face dir
        params = sharding.put_global(jax.tree.map(np.asarray, params), shardings)
    cast = jax.jit(lambda p: jax.tree.map(lambda x, a: x.astype(a.dtype), p, abstract),
                   out_shardings=shardings)
    return cast(params)


def _harness_eval(cfg: Any, mcfg: pythia.PythiaConfig, run_root: Any) -> Any:
    """The ``eval.harness_tasks`` evaluator, or None when there are none."""
    if not cfg.eval.harness_tasks:
        return None
    from cpt_jax.eval.harness import TrainingEval

    return TrainingEval(cfg.eval, mcfg, run_root)


def _check_finite(step: int, metrics: dict[str, Any], last_good: int | None, skipped: int,
                  limit: int) -> int:
    """The count of skipped steps after ``step``: the jitted step never applies a non-finite
    update (its ``nonfinite`` metric says so), so a bad batch costs nothing but itself. Up to
    ``limit`` (``optim.skip_nonfinite``) are skipped with a warning; beyond, the run stops naming
    the newest checkpoint, whose params are finite."""
    loss, bad = float(metrics["loss"]), float(metrics.get("nonfinite", 0.0)) > 0
    if not bad and math.isfinite(loss):
        return skipped
    what = f"loss is {loss}" if not math.isfinite(loss) else "gradient or update is not finite"
    if skipped < limit and bad:
        print(f"warning: {what} at step {step}: batch skipped without an update "
              f"({skipped + 1} of optim.skip_nonfinite={limit})", file=sys.stderr)
        return skipped + 1
    where = f"step {last_good}" if last_good is not None else "none was saved"
    raise UserError(
        f"{what} at step {step}: training stopped (last good checkpoint: {where}) -- the update "
        f"was not applied, every checkpoint holds finite params; {skipped} batches skipped before "
        f"(optim.skip_nonfinite={limit})"
    )


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


def _plan(cfg: Any, objective: Objective | None, trainable: Any, data: Any) -> _Plan:
    """Mesh, model, data, objective, optimizer and the state's shapes and shardings."""
    b, m, total = cfg.train.batch_size, cfg.train.micro_batches, cfg.train.steps
    mesh = sharding.make_mesh(cfg.mesh)
    sharding.check_batch(mesh, b, m)
    mcfg = pythia.PythiaConfig.from_config(cfg.model)

    data = as_source(_train_data(cfg) if data is None else data)
    domains = list(data.domains)
    if objective is None:
        objective = NextTokenObjective(mcfg, len(domains), cfg.train.vocab_chunk)
    schedule = make_schedule(cfg.schedule, cfg.optim.peak_lr, total)
    abstract_params = jax.eval_shape(lambda: pythia.init_params(mcfg, jax.random.key(0)))
    if trainable is None and cfg.train.train_only_new_rows:  # vocabulary expansion, phase 1
        rows = vocab.load_new_rows(cfg.train.train_only_new_rows)
        if max(rows, default=-1) >= mcfg.vocab_size:
            raise UserError(f"train.train_only_new_rows: row {max(rows)} is outside "
                            f"model.vocab_size = {mcfg.vocab_size}")
        trainable = vocab.embedding_only_mask(abstract_params, rows)
    tx = make_optimizer(cfg.optim, schedule, trainable)
    abstract = abstract_state(mcfg, tx, objective)
    shard = state_shardings(abstract, mesh)  # UserError for indivisible dims, before compiling
    if cfg.train.init_from and RunDir(cfg.run_dir).latest_step() is None:  # not a resume
        _check_init_from(cfg.train.init_from, abstract_params, mcfg)
    return _Plan(mesh, mcfg, data, objective, schedule, tx, abstract, shard)


def _train(cfg: Any, plan: _Plan, opened: OpenedRun, eval_sets: Any, wall0: float) -> dict[str, Any]:
    t, b, m, total = cfg.train.seq_len, cfg.train.batch_size, cfg.train.micro_batches, cfg.train.steps
    main = jax.process_index() == 0
    mesh, mcfg, data, objective, abstract, shard = (
        plan.mesh, plan.mcfg, plan.data, plan.objective, plan.abstract, plan.shard)
    abstract_params, tx, schedule = abstract.params, plan.tx, plan.schedule
    run, resumed = opened.run, opened.resumed
    timeout = cfg.storage.timeout_s  # each storage step: past it, exit 75 (storage.Deadline)
    ckpts = RunCheckpoints(run, cfg.checkpoint)
    domains = list(data.domains)
    if resumed is not None:
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shard
        )
        with storage.Deadline(timeout, f"restoring from {run.checkpoints}"):
            state, meta, resumed = restore_newest(ckpts, run, resumed, target)
        if isinstance(meta.get("data"), dict) and "domains" in meta["data"]:
            data.resume_step(meta["data"])  # refuses a checkpoint whose domain ids differ
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state.extras)):
            extras = jax.device_put(objective.init_extras(state.params), shard.extras)
            state = state.replace(extras=extras)
    else:
        init = cfg.train.init_from
        params = _init_params_from(init, abstract_params, shard.params) if init else None
        state = fresh_state(mcfg, tx, shard, cfg.seed, params, objective)
    banner.show(cfg, plan, opened)  # what this run does, before its first step
    start = int(jax.device_get(state.step))
    lawa = OnlineLawa.from_config(cfg)  # online LAWA window / EMA (docs/lawa.md); None when off
    if lawa is not None and resumed is not None:
        lawa.load_state(ckpts.restore_host_item(resumed, "lawa") or {}, like=state.params)

    record, model_record = run_record(to_dict(cfg)), config_to_dict(mcfg)  # stored in each step
    if main:
        run.write_json(MODEL, model_record)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))
    flops_tok = flops_per_token(mcfg, t, n_params)
    peak = peak_flops(jax.devices()[0])
    peak_total = peak * jax.device_count() if peak else None
    writer = MetricsWriter(run.root, main, cfg.logging.tensorboard, cfg.train.progress,
                           keep_until=resumed, config=to_dict(cfg))
    train_step = make_train_step(objective, tx, schedule, shard, mesh, m)
    # prints its memory and stops if it cannot fit
    banner.compile_step(train_step, state, sharding.abstract_batch(mesh, b, t))
    evals = _eval_sets(cfg, domains) if eval_sets is None else eval_sets
    token_bytes = token_bytes_for(cfg) if evals else None  # bits per byte beside the loss
    rep = sharding.replicated(mesh)

    harness = _harness_eval(cfg, mcfg, run.root)

    def run_eval(step: int) -> dict[str, Any]:
        if not evals and harness is None:
            return {}

        put = lambda a: sharding.put_global(a, rep)  # noqa: E731
        score = lambda p: evaluate(p, mcfg, evals, put=put, token_bytes=token_bytes)  # noqa: E731
        res = score(state.params) if evals else {}
        rec: dict[str, Any] = {"step": step, **(to_metrics(res) if res else {})}
        if lawa is not None and evals:  # eval_lawa/... and eval_ema/... beside the raw model
            rec.update(lawa.eval_metrics(score, state.params))
        if harness is not None:  # harness/<task>/<metric>, in process on the live params
            rec.update(harness(state.params))
        writer.write(rec)
        return res

    stop = StopFlag(start)
    stop.install()
    window, pending = Window(), []
    last_good, last_saved = resumed, resumed
    final_eval: dict[str, Any] = {}
    last_loss = float("nan")
    interrupted = None
    done = start
    tok_step = b * t

    skipped = 0  # batches skipped for a non-finite gradient (optim.skip_nonfinite)

    def drain(keep: int) -> None:
        """Fetch metrics of finished steps (all but the newest ``keep``), check them; a skipped
        step counts in ``train/skipped_steps`` and not in the window's means."""
        nonlocal last_loss, skipped
        while len(pending) > keep:
            s, dev = pending.pop(0)
            host = jax.device_get(dev)
            skipped = _check_finite(s, host, last_good, skipped, cfg.optim.skip_nonfinite)
            bad = float(host.pop("nonfinite", 0.0)) > 0
            if skipped:
                window.extra["train/skipped_steps"] = float(skipped)
            if not bad:
                window.add(host)
                last_loss = float(host["loss"])

    def save(step: int) -> None:
        nonlocal last_good, last_saved
        data_state = data.state(step)
        meta = {"step": step, "data": data_state, "tokens": step * tok_step,
                "wall_time_s": time.time() - wall0, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "run": record, "model": model_record}
        with storage.Deadline(timeout, f"saving checkpoint step {step} to {run.checkpoints}"):
            ckpts.save(state, meta, host_items={"lawa": lawa.state()} if lawa is not None else None)
            writer.sync()
        last_good = last_saved = step

    extra_evals = eval_steps(cfg.train)
    if resumed is None and cfg.train.init_from and (cfg.train.eval_every > 0 or extra_evals):
        run_eval(0)  # the starting point of a continuation: learning and forgetting start here
    source = data.iterator(start, total)
    try:
        for s in range(start, total):
            batch = sharding.global_batch(next(source), mesh, b)
            state, metrics = train_step(state, batch)
            done = s + 1
            if lawa is not None:
                lawa.after_step(done, state.params)
            pending.append((done, metrics))
            drain(1)  # one step behind: the host never waits on the step it just dispatched
            log = done % cfg.train.log_every == 0 or done == total
            do_eval = done < total and ((cfg.train.eval_every > 0 and done % cfg.train.eval_every == 0)
                                        or done in extra_evals)
            do_ckpt = (cfg.checkpoint.every > 0 and done % cfg.checkpoint.every == 0) or done == total
            interrupted = stop.should_stop(log or do_eval or do_ckpt)
            if log or do_eval or do_ckpt or interrupted:
                drain(0)
            if (log or interrupted) and window.losses:
                now = time.perf_counter()
                rec = window.record(done, domains, done * tok_step, now - window.t0, flops_tok,
                                    peak_total, tok_step)
                writer.write(rec)
                eta = (total - done) * (now - window.t0) / len(window.losses)
                writer.progress(done, total, rec["train/loss"], rec["tokens_per_s"], eta, rec["mfu"])
                window.reset(time.perf_counter())
            if do_ckpt or interrupted:
                save(done)
            if do_eval:
                final_eval = run_eval(done)
            if do_ckpt or do_eval:
                window.t0 = time.perf_counter()  # tokens/s counts training time only
            if interrupted:
                break
        if interrupted is None and done == total:
            final_eval = run_eval(done)
    except BaseException:
        with storage.Deadline(timeout, "finishing the last checkpoint write"), contextlib.suppress(UserError):
            ckpts.wait()  # leave the last good checkpoint complete on disk
        raise
    finally:
        getattr(source, "close", lambda: None)()  # stops prefetch threads / workers
        stop.restore()
        with storage.Deadline(timeout, f"writing the metrics of {run}"):
            writer.close()
    with storage.Deadline(timeout, f"finishing the checkpoint writes under {run.checkpoints}"):
        ckpts.close()
    summary = {
        "run_dir": str(run),
        "steps": done,
        "tokens": done * tok_step,
        "wall_time_s": time.time() - wall0,
        "final_train_loss": last_loss,
        "final_eval": final_eval,
        "resumed_from": resumed,
        "last_checkpoint": last_saved,
        "interrupted": interrupted,
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
    }
    if main:
        run.write_json(SUMMARY, summary)
    return summary
