"""What the training loop does between steps: small hooks, each with a cadence.

After optimizer step t (counted from 1) the loop calls ``Hooks.after_step(t, state, metrics)``:

1. the online LAWA window takes its snapshot of theta_t when nu | t;
2. ``MetricsDrain`` fetches the metrics of step t - 1 (one step behind: the host never waits on
   the step it has just dispatched) and checks them for a non-finite loss or gradient;
3. ``LogHook`` (every ``train.log_every`` and at the last step), ``EvalHook`` (every
   ``train.eval_every`` and at ``train.eval_steps``; the last step's eval follows the loop) and
   ``CheckpointHook`` (every ``checkpoint.every`` and at the last step) say whether they are due;
   the stop check agrees on a signal across processes at such a step (``train.signals``);
4. when anything is due, or the run stops: every pending metric is fetched, then the log line
   is written, the checkpoint saved and the eval run, in this order.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable

import jax

from cpt_jax import storage
from cpt_jax.errors import UserError
from cpt_jax.eval.perplexity import evaluate, to_metrics
from cpt_jax.train.metrics import MetricsWriter, Window
from cpt_jax.train.signals import StopFlag
from cpt_jax.train.state import ema_params


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Due at each multiple of ``every`` (0 = never by count) and at each step in ``at``."""

    every: int = 0
    at: frozenset[int] = frozenset()

    def due(self, step: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or step in self.at

    @property
    def ever(self) -> bool:
        """Whether this cadence is due at any step at all."""
        return self.every > 0 or bool(self.at)


def check_finite(step: int, metrics: dict[str, Any], last_good: int | None, skipped: int,
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


class MetricsDrain:
    """Device metrics of dispatched steps, fetched to the host in order into the log window;
    a skipped step counts in ``train/skipped_steps`` and not in the window's means."""

    def __init__(self, window: Window, skip_limit: int, last_good: Callable[[], int | None]) -> None:
        self.window, self.skip_limit, self.last_good = window, skip_limit, last_good
        self.pending: list[tuple[int, Any]] = []
        self.skipped = 0  # batches skipped for a non-finite gradient (optim.skip_nonfinite)
        self.last_loss = float("nan")

    def add(self, step: int, metrics: Any) -> None:
        self.pending.append((step, metrics))

    def flush(self, keep: int) -> None:
        """Fetch and check every pending step but the newest ``keep``."""
        while len(self.pending) > keep:
            step, dev = self.pending.pop(0)
            host = jax.device_get(dev)
            self.skipped = check_finite(step, host, self.last_good(), self.skipped, self.skip_limit)
            bad = float(host.pop("nonfinite", 0.0)) > 0
            if self.skipped:
                self.window.extra["train/skipped_steps"] = float(self.skipped)
            if not bad:
                self.window.add(host)
                self.last_loss = float(host["loss"])


@dataclasses.dataclass
class LogHook:
    """The ``train/...`` line of the steps since the last one, and the progress line."""

    cadence: Cadence
    writer: MetricsWriter
    window: Window
    domains: list[str]
    total: int
    tokens_per_step: int
    flops_per_token: float
    peak_flops: float | None  # of all devices together; None where unknown

    def due(self, step: int) -> bool:
        return self.cadence.due(step)

    def __call__(self, step: int) -> None:
        w, tok = self.window, self.tokens_per_step
        if not w.losses:
            return
        now = time.perf_counter()
        rec = w.record(step, self.domains, step * tok, now - w.t0, self.flops_per_token,
                       self.peak_flops, tok)
        self.writer.write(rec)
        eta = (self.total - step) * (now - w.t0) / len(w.losses)
        self.writer.progress(step, self.total, rec["train/loss"], rec["tokens_per_s"], eta, rec["mfu"])
        w.reset(time.perf_counter())


@dataclasses.dataclass
class Evaluator:
    """Held-out loss of the live params on ``sets`` (bits per byte with ``token_bytes``), the
    online LAWA average and the state's EMA beside them, and the harness tasks; one metrics line."""

    writer: MetricsWriter
    model_config: Any
    sets: dict[str, list[dict]] | None
    token_bytes: Any
    put: Callable[[Any], Any]
    lawa: Any = None  # OnlineLawa
    harness: Any = None  # eval.harness.TrainingEval

    def score(self, params: Any) -> dict[str, dict[str, float]]:
        return evaluate(params, self.model_config, self.sets, put=self.put, token_bytes=self.token_bytes)

    def __call__(self, step: int, state: Any) -> dict[str, Any]:
        if not self.sets and self.harness is None:
            return {}
        res = self.score(state.params) if self.sets else {}
        rec: dict[str, Any] = {"step": step, **(to_metrics(res) if res else {})}
        if self.lawa is not None and self.sets:  # eval_lawa/... beside the raw model
            rec.update(self.lawa.eval_metrics(self.score, state.params))
        ema = ema_params(state) if self.sets else None
        if ema is not None:  # eval_ema/...
            rec.update(to_metrics(self.score(ema), prefix="eval_ema"))
        if self.harness is not None:  # harness/<task>/<metric>, in process on the live params
            rec.update(self.harness(state.params))
        self.writer.write(rec)
        return res


@dataclasses.dataclass
class EvalHook:
    """The evaluator on its cadence before the last step; ``last`` holds the newest results."""

    cadence: Cadence
    evaluator: Evaluator
    total: int
    last: dict[str, Any] = dataclasses.field(default_factory=dict)

    def due(self, step: int) -> bool:
        return step < self.total and self.cadence.due(step)

    def __call__(self, step: int, state: Any) -> None:
        self.last = self.evaluator(step, state)


@dataclasses.dataclass
class CheckpointHook:
    """Saves the state, the data position, the LAWA window and the run's record at a step."""

    cadence: Cadence
    checkpoints: Any  # train.checkpoint.RunCheckpoints
    data: Any  # TrainSource
    writer: MetricsWriter
    record: dict[str, Any]  # {"run": ..., "model": ...} stored in every step's meta
    tokens_per_step: int
    wall0: float
    timeout_s: float
    last_saved: int | None = None
    lawa: Any = None

    def due(self, step: int) -> bool:
        return self.cadence.due(step)

    def __call__(self, step: int, state: Any) -> None:
        meta = {"step": step, "data": self.data.state(step), "tokens": step * self.tokens_per_step,
                "wall_time_s": time.time() - self.wall0,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **self.record}
        host = {"lawa": self.lawa.state()} if self.lawa is not None else None
        with storage.Deadline(self.timeout_s, f"saving checkpoint step {step} to {self.checkpoints.directory}"):
            self.checkpoints.save(state, meta, host_items=host)
            self.writer.sync()
        self.last_saved = step


@dataclasses.dataclass
class Hooks:
    """The hooks of one run, called after each step in the order of the module docstring."""

    drain: MetricsDrain
    log: LogHook
    evaluate: EvalHook
    checkpoint: CheckpointHook
    stop: StopFlag
    lawa: Any = None

    def after_step(self, step: int, state: Any, metrics: Any) -> str | None:
        """Run what is due after ``step``; the signal to stop for, or None."""
        if self.lawa is not None:
            self.lawa.after_step(step, state.params)
        self.drain.add(step, metrics)
        self.drain.flush(1)
        log, ev, ckpt = self.log.due(step), self.evaluate.due(step), self.checkpoint.due(step)
        stop = self.stop.should_stop(log or ev or ckpt)
        if log or ev or ckpt or stop:
            self.drain.flush(0)
        if log or stop:
            self.log(step)
        if ckpt or stop:
            self.checkpoint(step, state)
        if ev:
            self.evaluate(step, state)
        if ckpt or ev:
            self.log.window.t0 = time.perf_counter()  # tokens/s counts training time only
        return stop
