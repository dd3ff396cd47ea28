"""What a training run is about to do, printed once before its first step (process 0, stderr).

::

    run       runs/pythia-410m-mine
    devices   8 x NVIDIA H100 80GB HBM3 (1 process), mesh data=1 fsdp=8 tensor=1
    model     L=24 d=1024 H=16 V=50304, 405,334,016 parameters, float32 params / bfloat16 compute
    weights   train.init_from ckpt/pythia-410m (fresh optimizer state)
    data      tokenized data/mine: mydomain 1,204,111 tokens, general 9,876,000 tokens
    mixture   mydomain 95.0%, general 5.0% (replay: 3.2 of 64 sequences per batch from general)
    schedule  cosine, 2000 steps: lr 3e-05 -> 0.0003 over 20 warmup steps -> 3e-05 at the end
    batch     64 x 2048 tokens = 131,072 tokens per step, 262,144,000 tokens in all

    memory    peak 41.3 GiB per device (arguments 2.1, temporaries 39.2) of 79.6 GiB: fits

The "starting RUN" / "resuming RUN from step N" line comes from ``train.resume``. The memory
line is the compiled step's own plan, printed before the first step; a step that cannot fit
stops the run there (``check_memory``) instead of failing in the allocator mid-step.
"""

from __future__ import annotations

import sys
from typing import Any

import jax

from cpt_jax.checks import comma_list
from cpt_jax.data.mixture import replay_quota
from cpt_jax.errors import UserError
from cpt_jax.model.pythia import count_params

GIB = 1 << 30


def lines(cfg: Any, plan: Any, resumed: int | None, run: Any) -> list[str]:
    """The banner's lines (see the module docstring)."""
    m, t = plan.mcfg, cfg.train
    n = count_params(plan.abstract.params)
    devices = jax.devices()
    mesh = " ".join(f"{k}={v}" for k, v in dict(plan.mesh.shape).items())
    out = [f"run       {run}",
           f"devices   {len(devices)} x {devices[0].device_kind} ({jax.process_count()} process"
           f"{'es' if jax.process_count() > 1 else ''}), mesh {mesh}",
           f"model     L={m.num_layers} d={m.hidden_size} H={m.num_heads} V={m.vocab_size}, {n:,} "
           f"parameters, {m.param_dtype} params / {m.compute_dtype} compute",
           f"weights   {_weights(cfg, resumed)}",
           f"data      {plan.data.describe()}"]
    mixture = _mixture(cfg, plan.data)
    if mixture:
        out.append(f"mixture   {mixture}")
    out.append(f"schedule  {schedule_line(cfg, plan.schedule)}")
    tok = t.batch_size * t.seq_len
    out.append(f"batch     {t.batch_size} x {t.seq_len} tokens = {tok:,} tokens per step, "
               f"{tok * t.steps:,} tokens in all")
    return out


def show(cfg: Any, plan: Any, opened: Any) -> None:
    """Print the banner on process 0 (stderr)."""
    if jax.process_index() == 0:
        print("\n".join(lines(cfg, plan, opened.resumed, opened.run)), file=sys.stderr, flush=True)


def device_memory() -> int | None:
    """Bytes one local device may allocate (its allocator's limit), None where unknown (CPU)."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def peak_bytes(memory: Any) -> int:
    """Per-device peak of a compiled step: arguments + temporaries + outputs - aliased."""
    return int(memory.argument_size_in_bytes + memory.temp_size_in_bytes
               + memory.output_size_in_bytes - memory.alias_size_in_bytes)


def memory_line(memory: Any, limit: int | None) -> str:
    """``memory   peak X GiB per device (arguments A, temporaries T) of L GiB: fits``."""
    peak = peak_bytes(memory)
    text = (f"memory    peak {peak / GIB:.2f} GiB per device (arguments "
            f"{memory.argument_size_in_bytes / GIB:.2f}, temporaries {memory.temp_size_in_bytes / GIB:.2f})")
    if limit is None:
        return text + " (this device reports no memory limit)"
    return text + f" of {limit / GIB:.2f} GiB: " + ("fits" if peak <= limit else "does NOT fit")


_WAY_OUT = ("lower train.batch_size (cpt-jax compile --config CONFIG --topology SLICE --fit batch finds "
            "the largest that fits), raise train.micro_batches, set model.remat=dots or full, or set "
            "train.vocab_chunk")


def check_memory(memory: Any, limit: int | None) -> None:
    """Print the memory line (process 0) and stop with one line when the step cannot fit."""
    if jax.process_index() == 0:
        print(memory_line(memory, limit), file=sys.stderr, flush=True)
    if limit is not None and peak_bytes(memory) > limit:
        raise UserError(f"the train step needs {peak_bytes(memory) / GIB:.2f} GiB per device but "
                        f"{limit / GIB:.2f} GiB are available: {_WAY_OUT}")


def compile_step(train_step: Any, state: Any, batch: Any) -> Any:
    """Compile the train step before the first batch (``OnMesh.compile``: the loop then runs
    that executable), print its memory and stop when it cannot fit. A compiler that refuses
    the program for memory (a TPU checks HBM while compiling) is one line too."""
    try:
        compiled = train_step.compile(state, batch)
    except Exception as err:  # noqa: BLE001 - XLA's error types vary by backend
        text = str(err)
        if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
            raise
        first = next((ln for ln in text.splitlines() if "memory" in ln.lower()), text.splitlines()[0])
        raise UserError(f"the train step does not fit in device memory ({first.strip()[:200]}): "
                        f"{_WAY_OUT}") from None
    check_memory(compiled.memory_analysis(), device_memory())
    return compiled


def _weights(cfg: Any, resumed: int | None) -> str:
    if resumed is not None:
        return f"the run's checkpoint at step {resumed} (params, optimizer state, data position)"
    if cfg.train.init_from:
        return f"train.init_from {cfg.train.init_from} (fresh optimizer state)"
    return f"Pythia initialisation, seed {cfg.seed}"


def _mixture(cfg: Any, data: Any) -> str:
    """Each domain's share of the first batch, the replay quota and the phases ("" when the
    source states no mixture)."""
    w = data.weights_at(0)
    if w is None:
        return ""
    text = ", ".join(f"{n} {100 * float(x):.1f}%" for n, x in zip(data.domains, w) if x > 0)
    d, b = cfg.data, cfg.train.batch_size
    quota = float(replay_quota(d.replay_fraction, b)) if d.replay_fraction > 0 else 0.0
    if quota:
        text += (f" (replay: {quota:g} of {b} sequences per batch from "
                 f"{', '.join(comma_list(d.replay_domains))})")
    if d.phases:
        text += f"; phases {d.phases}"
    return text


def schedule_line(cfg: Any, schedule: Any) -> str:
    """``cosine, 2000 steps: lr 3e-05 -> 0.0003 over 20 warmup steps -> 3e-05 at the end``."""
    from cpt_jax.schedules import describe, resolve_phases

    s, total = cfg.schedule, cfg.train.steps
    phases = resolve_phases(s, cfg.optim.peak_lr, total)
    lr = lambda k: float(schedule(k))  # noqa: E731
    warm = getattr(phases[0], "warmup", None)
    mid = f" -> {cfg.optim.peak_lr:.3g} over {warm} warmup steps" if warm else \
        f", peak {cfg.optim.peak_lr:.3g}"
    return (f"{describe(s, cfg.optim.peak_lr, total)}, {total} steps: lr {lr(0):.3g}{mid} -> "
            f"{lr(total - 1):.3g} at the end")
