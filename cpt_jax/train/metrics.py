"""Run logging: ``RUN/metrics.jsonl``, TensorBoard, Weights & Biases, the progress line, FLOPs and MFU.

``metrics.jsonl`` keeps the flat keys (``loss``, ``lr``, ``train/<domain>/loss``,
``eval/<domain>/loss``, ...). TensorBoard and W&B get each value once, grouped by prefix:
``train/`` (loss, lr, grad_norm, per-domain loss), ``perf/`` (tokens_per_s, mfu, tokens),
``eval/``, ``eval_lawa/``, ``doremi/`` ...; the run's ``config.json`` is logged once, as text
(TensorBoard) and as the run config (W&B), when a run starts. W&B is optional
(``pip install 'cpt-jax[wandb]'``, ``logging.wandb_project``; ``WANDB_MODE=offline`` writes
under ``RUN/wandb`` without a network).

FLOPs per token (PaLM convention, Chowdhery et al. 2022, appendix B)::

    F = 6 * N_matmul + 12 * L * T * d,     N_matmul = all parameters except embed_in

(the input embedding is a lookup; the unembedding is a matmul). MFU = tokens/s * F / (number
of devices * peak FLOP/s of one device); the peak comes from the device kind (dense bf16; see
``PEAK_TFLOPS``) and MFU is ``null`` where it is unknown (e.g. CPU).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import numpy as np

from cpt_jax.errors import UserError
from cpt_jax.run_dir import METRICS, TENSORBOARD, trim_metrics
from cpt_jax import storage
from cpt_jax.storage import Mirror

# ungrouped metrics.jsonl keys -> their TensorBoard / W&B tag ("loss" repeats "train/loss")
TAGS = {"loss": None, "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens": "perf/tokens",
        "tokens_per_s": "perf/tokens_per_s", "mfu": "perf/mfu"}

# dense bf16 peak TFLOP/s per device, matched by substring of jax's device_kind (lower case)
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h200", 989.0),
    ("h100", 989.0),
    ("gh200", 989.0),
    ("a100", 312.0),
    ("l40s", 362.0),
    ("l4", 121.0),
    ("a10", 125.0),
    ("v6", 918.0),  # TPU v6e (Trillium)
    ("v5 lite", 197.0),
    ("v5e", 197.0),
    ("v5", 459.0),  # TPU v5p reports "TPU v5"
    ("v4", 275.0),
)


def flops_per_token(model_config: Any, seq_len: int, n_params: int) -> float:
    """``6 * N_matmul + 12 * L * T * d`` with ``N_matmul = n_params - V * d``."""
    c = model_config
    n_matmul = n_params - c.vocab_size * c.hidden_size
    return 6.0 * n_matmul + 12.0 * c.num_layers * seq_len * c.hidden_size


def peak_flops(device: Any) -> float | None:
    """Peak dense bf16 FLOP/s of one device, or None when unknown."""
    kind = str(getattr(device, "device_kind", "")).lower()
    for key, tflops in PEAK_TFLOPS:
        if key in kind:
            return tflops * 1e12
    return None


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class MetricsWriter:
    """Appends JSON lines (process 0 only), mirrors them to TensorBoard, prints progress.

    On resume from step ``keep_until`` the lines of later steps (logged after the last
    checkpoint by a run that was killed) are dropped first, so each step is logged once. For a
    ``gs://`` run dir the files are written locally and uploaded by ``sync()`` (at each
    checkpoint, at most every ``SYNC_EVERY_S`` seconds, and on close).
    """

    SYNC_EVERY_S = 60.0

    def __init__(self, run_dir: Any, enabled: bool, tensorboard: bool, progress: bool,
                 keep_until: int | None = None, config: dict | None = None):
        self.enabled = enabled
        self.progress_on = progress and enabled
        self._mirror = Mirror(run_dir, (METRICS, TENSORBOARD, WANDB), "logs") if enabled else None
        self._file = None
        self._tb = None
        self._wandb = None
        self._lr: float | None = None
        self._synced = time.monotonic()
        if not enabled:
            return
        self.path = self._mirror.dir / METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trim_metrics(self.path, keep_until)
        self._file = open(self.path, "a")
        config = config or {}  # the run's resolved config (what config.json holds)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self._mirror.dir / TENSORBOARD))
            except ImportError:
                print("tensorboardX is not installed: no TensorBoard events", file=sys.stderr)
        if self._tb is not None and keep_until is None and config:
            self._tb.add_text("config", config_markdown(config), 0)  # once, when the run starts
        project = (config.get("logging") or {}).get("wandb_project", "")
        if project:
            self._wandb = start_wandb(project, config, self._mirror.dir, str(run_dir))
        self._tty = sys.stderr.isatty()

    def write(self, record: dict[str, Any]) -> None:
        """One line ``{"step": s, ...}``; non-finite floats are written as null."""
        if not self.enabled:
            return
        clean = {k: _jsonable(v) for k, v in record.items()}
        line = json.dumps(clean) + "\n"
        with storage.full_disk_is_one_line(self.path, "a metrics record", len(line.encode())):
            self._file.write(line)
            self._file.flush()
        step = int(record["step"])
        scalars = tagged(clean)
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if isinstance(clean.get("lr"), float):
            self._lr = clean["lr"]
        self._print_eval(step, clean)
        if time.monotonic() - self._synced > self.SYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        """Upload the log files to a remote run dir (nothing to do for a local one)."""
        if self._mirror is None:
            return
        if self._tb is not None:
            self._tb.flush()
        self._mirror.sync()
        self._synced = time.monotonic()

    def progress(self, step: int, total: int, loss: float, tokens_per_s: float, eta_s: float,
                 mfu: float | None) -> None:
        """``step 120/1000 (12%) | loss 3.2141 | lr 2.91e-04 | 51.2k tok/s | mfu 31.0% | eta 0:03:12``
        (lr: that of the last record written; the rate of the first line leaves out compiling)."""
        if not self.progress_on:
            return
        rate = f"{tokens_per_s / 1e3:.1f}k tok/s" if math.isfinite(tokens_per_s) else "compiling"
        lr = f" | lr {self._lr:.2e}" if self._lr is not None else ""
        text = (f"step {step}/{total} ({100 * step / total:.0f}%) | loss {loss:.4f}{lr} | {rate}"
                + (f" | mfu {100 * mfu:.1f}%" if mfu else "") + f" | eta {_fmt_time(eta_s)}")
        end = "" if self._tty and step < total else "\n"
        print(("\r\033[K" if self._tty else "") + text, end=end, file=sys.stderr, flush=True)

    def _print_eval(self, step: int, record: dict[str, Any]) -> None:
        """``eval step 200 | general 3.2141 | mydomain 2.9012 | avg 3.0577`` for an eval record,
        and ``harness step 200 | piqa/acc 0.6012 | ...`` when it has harness metrics."""
        if not self.progress_on:
            return
        losses = {k.split("/")[1]: v for k, v in record.items()
                  if k.startswith("eval/") and k.endswith("/loss") and k.count("/") == 2
                  and isinstance(v, float)}
        lines = []
        if losses:
            groups = ("avg", "worst", "upstream", "downstream")
            names = [d for d in losses if d not in groups] + [g for g in groups if g in losses]
            lines.append(f"eval step {step} | " + " | ".join(f"{d} {losses[d]:.4f}" for d in names))
        harness = {k[len("harness/"):]: v for k, v in record.items()
                   if k.startswith("harness/") and "stderr" not in k and isinstance(v, float)}
        if harness:
            lines.append(f"harness step {step} | " + " | ".join(f"{k} {v:.4f}" for k, v in harness.items()))
        for text in lines:
            print(("\r\033[K" if self._tty else "") + text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._mirror is not None:
            self._mirror.sync()
        if self.progress_on and self._tty:
            print(file=sys.stderr)


WANDB = "wandb"  # W&B's files under the run dir


def tagged(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers under their TensorBoard / W&B tags, each once (see ``TAGS``)."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        tag = TAGS.get(k, k) if "/" not in k else k
        if tag is not None:
            out[tag if "/" in tag else f"train/{tag}"] = v  # objective metrics without a group
    return out


def config_markdown(config: dict[str, Any]) -> str:
    """The run config as a Markdown code block (TensorBoard's text plugin renders Markdown)."""
    return "```json\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```"


def start_wandb(project: str, config: dict[str, Any], local_dir: Any, run_dir: str) -> Any:
    """A W&B run for ``run_dir`` (resumed under the same id when the run resumes)."""
    import hashlib

    try:
        import wandb
    except ImportError:
        raise UserError("logging.wandb_project needs wandb: pip install 'cpt-jax[wandb]'") from None
    run_id = hashlib.sha256(run_dir.encode()).hexdigest()[:16]
    name = run_dir.rstrip("/").rsplit("/", 1)[-1]
    return wandb.init(project=project, name=name, id=run_id, resume="allow", config=config,
                      dir=str(local_dir))


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _jsonable(v.item())
    return v


class Window:
    """Per-step host metrics accumulated between two log lines."""

    def __init__(self) -> None:
        self.reset(time.perf_counter())
        self._first = True

    def reset(self, now: float) -> None:
        self.t0 = now
        self.untimed = 0  # steps of this window before t0 (the first, which compiled)
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.lr = float("nan")
        self.dom_sum: np.ndarray | None = None
        self.dom_cnt: np.ndarray | None = None
        self.extra: dict[str, Any] = {}

    def add(self, m: dict[str, Any]) -> None:
        if getattr(self, "_first", False):  # the run's first step includes compiling: time from its end
            self._first, self.t0, self.untimed = False, time.perf_counter(), 1
        self.losses.append(float(m["loss"]))
        self.grad_norms.append(float(m["grad_norm"]))
        self.lr = float(m["lr"])
        if "domain_loss_sum" in m:
            s, c = np.asarray(m["domain_loss_sum"], np.float64), np.asarray(m["domain_tokens"], np.float64)
            self.dom_sum = s if self.dom_sum is None else self.dom_sum + s
            self.dom_cnt = c if self.dom_cnt is None else self.dom_cnt + c
        for k, v in m.items():
            if k not in ("loss", "grad_norm", "lr", "domain_loss_sum", "domain_tokens"):
                self.extra[k] = v  # objective metrics: the latest value

    def record(self, step: int, domains: list[str], tokens: int, elapsed: float,
               flops_tok: float, peak_total: float | None, steps_tokens: int) -> dict[str, Any]:
        """The log line: ``train/loss`` and ``grad_norm`` are means over the window's steps,
        per-domain losses token-weighted over the window, ``lr`` the last step's eta_t."""
        loss = float(np.mean(self.losses))
        timed = len(self.losses) - self.untimed
        tps = steps_tokens * timed / max(elapsed, 1e-9) if timed > 0 else float("nan")
        rec: dict[str, Any] = {"step": step, "train/loss": loss, "loss": loss, "lr": self.lr,
                               "grad_norm": float(np.mean(self.grad_norms)), "tokens": tokens,
                               "tokens_per_s": tps,
                               "mfu": tps * flops_tok / peak_total if peak_total and timed > 0 else None}
        if self.dom_sum is not None:
            for k, name in enumerate(domains):
                if self.dom_cnt[k] > 0:
                    rec[f"train/{name}/loss"] = float(self.dom_sum[k] / self.dom_cnt[k])
        for k, v in self.extra.items():
            arr = np.asarray(v)
            if arr.ndim == 0:
                rec[k] = float(arr)
            elif arr.ndim == 1 and len(arr) == len(domains) and "/" in k:
                for i, name in enumerate(domains):  # "doremi/alpha" -> "doremi/alpha/<domain>"
                    rec[f"{k}/{name}"] = float(arr[i])
        return rec
