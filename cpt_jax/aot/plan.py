"""The memory plan of a config's train step on a slice, measured by the slice's own compiler.

``compile_plan(cfg, topology)`` builds exactly the step ``cpt-jax train`` runs (mesh, model,
attention, remat, batch, micro-batches, vocab chunk, AdamW state; the DoReMi proxy's Group-DRO
step with its reference model when asked), lowers it from ``ShapeDtypeStruct``s that carry the
shardings, and compiles it for the topology's devices. Nothing is allocated or run.

Per chip: ``peak = arguments + temporaries + outputs - aliased`` (the donated state is both an
argument and an output). A TPU compiler refuses a program over the chip's HBM; the plan then
keeps the temporaries the refusal names. FLOPs follow the project's MFU convention (PaLM's
``6 N + 12 L T d`` per token; XLA's ``cost_analysis`` counts a scanned layer once). The roofline
takes FLOPs and HBM bytes from compiles of the same step with 1 and 2 unrolled layers,
extrapolated linearly to L layers, and bounds the step at ``max(FLOPs / peak, bytes / bandwidth)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cpt_jax import sharding
from cpt_jax.aot.topology import Topology
from cpt_jax.checks import comma_list
from cpt_jax.config import to_dict
from cpt_jax.errors import UserError
from cpt_jax.model import attention as attn_lib
from cpt_jax.model import pythia
from cpt_jax.train.metrics import flops_per_token

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
KERNELS = {"tpu": "tpu_custom_call", "gpu": "__cudnn$fmha"}
_OOM = re.compile(r"(?:temporaries|required)[^()]*\(([\d.]+)([KMGT]?)\)\s*exceeds available HBM")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclasses.dataclass
class Plan:
    """One compile's figures, per chip (``--json`` writes these fields)."""

    topology: str
    chips: int
    mesh: dict[str, int]
    batch_size: int
    micro_batches: int
    seq_len: int
    remat: str
    attention: str  # the implementation compiled, and whether its fused kernel is in the program
    hbm_bytes_per_chip: int
    argument_bytes: int
    temp_bytes: int
    output_bytes: int
    alias_bytes: int
    peak_bytes: int
    fits: bool
    flops_per_chip: float
    collectives: dict[str, int]
    compile_s: float
    refused: str = ""  # the compiler's reason when it refused the program
    bytes_accessed_per_chip: float | None = None
    step_time_bound_s: float | None = None
    mfu_ceiling: float | None = None
    doremi: bool = False


def _domains(cfg: Any, doremi: bool) -> int:
    """Domains the step's per-domain sums cover (only [k]-sized vectors depend on it)."""
    names = comma_list(cfg.data.domains) + comma_list(cfg.data.replay_domains)
    return max(2 if doremi else 1, len(dict.fromkeys(names)))


def abstract_step(cfg: Any, devices: list[Any], doremi: bool = False,
                  model_overrides: dict | None = None) -> tuple[Any, tuple, Any, pythia.PythiaConfig]:
    """``(train_step, (state, batch) as sharded ShapeDtypeStructs, mesh, model config)`` of
    ``cfg`` on ``devices``: what ``train.loop`` builds, from shapes only."""
    from cpt_jax import doremi as doremi_lib
    from cpt_jax.optim import make_optimizer
    from cpt_jax.schedules import make_schedule
    from cpt_jax.train.state import TrainState, abstract_state, state_shardings
    from cpt_jax.train.step import NextTokenObjective, make_train_step

    b, m, t = cfg.train.batch_size, cfg.train.micro_batches, cfg.train.seq_len
    mesh = sharding.make_mesh(cfg.mesh, devices)
    sharding.check_batch(mesh, b, m)
    mcfg = dataclasses.replace(pythia.PythiaConfig.from_config(cfg.model), **(model_overrides or {}))
    k = _domains(cfg, doremi)
    schedule = make_schedule(cfg.schedule, cfg.optim.peak_lr, cfg.train.steps)
    tx = make_optimizer(cfg.optim, schedule)
    state = abstract_state(mcfg, tx, ema=cfg.lawa.ema > 0)  # the params' EMA: one more fp32 copy
    if doremi:
        d = cfg.doremi
        objective = doremi_lib.DoReMiObjective(mcfg, k, state.params, d.eta, d.c, d.normalization,
                                               absent=d.absent, micro_batches=m)
        extras = {"doremi": jax.eval_shape(lambda: doremi_lib.init_state(k)), "reference": state.params}
        state = TrainState(step=state.step, params=state.params, opt_state=state.opt_state, extras=extras,
                           ema=state.ema)
    else:
        objective = NextTokenObjective(mcfg, k, cfg.train.vocab_chunk)
    shard = state_shardings(state, mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shard)
    step = make_train_step(objective, tx, schedule, shard, mesh, m, cfg.lawa.ema)
    return step, (state, sharding.abstract_batch(mesh, b, t)), mesh, mcfg


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ``ShapeDtypeStruct``s (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def count_collectives(hlo: str) -> dict[str, int]:
    """Collective ops in a compiled program's text, by kind (an async pair counts once; a
    scanned layer's ops count once, as the program holds them)."""
    return {kind: len(re.findall(rf"\s{kind}(?:-start)?\(", hlo)) for kind in COLLECTIVES}


def _refused_temp_bytes(message: str) -> int | None:
    m = _OOM.search(message)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def _attention(mcfg: pythia.PythiaConfig, seq_len: int, mesh: Any, hlo: str) -> str:
    """The implementation compiled, with its fused kernel's count in the program (when there
    is a program: a refused one has none)."""
    with jax.set_mesh(mesh):
        impl = attn_lib.resolve(mcfg.attention, mcfg.head_dim, jnp.dtype(mcfg.compute_dtype), seq_len,
                                mcfg.attention_chunk)
    kernel = {"splash": KERNELS["tpu"], "cudnn": KERNELS["gpu"]}.get(impl)
    return f"{impl} ({kernel} x{hlo.count(kernel)})" if kernel and hlo else impl


def compile_plan(cfg: Any, topo: Topology, doremi: bool = False, roofline: bool = True,
                 cache: str | None = None) -> Plan:
    """Compile ``cfg``'s train step for ``topo`` and read the compiler's figures (cached by a
    hash of the config and topology under ``cache`` when given)."""
    key = _cache_key(cfg, topo, doremi, roofline)
    hit = _cache_read(cache, key)
    if hit is not None:
        return hit
    devices = topo.devices()
    step, args, mesh, mcfg = abstract_step(cfg, devices, doremi)
    t, b = cfg.train.seq_len, cfg.train.batch_size
    t0 = time.perf_counter()
    refused, hlo, mem = "", "", None
    try:
        compiled = step.lower(*args).compile()
        mem, hlo = compiled.memory_analysis(), compiled.as_text()
    except Exception as err:  # noqa: BLE001 - XLA's error types vary by plugin
        text = str(err)
        if _refused_temp_bytes(text) is None and "RESOURCE_EXHAUSTED" not in text:
            raise UserError(f"compiling for {topo.name} failed: {text.splitlines()[0][:300]}") from None
        refused = next((line.strip() for line in text.splitlines() if "HBM" in line or "memory" in line),
                       text.splitlines()[0])[:300]
    compile_s = time.perf_counter() - t0
    state_bytes = shard_bytes(args[0])
    if mem is not None:
        arg, temp, out, alias = (int(mem.argument_size_in_bytes), int(mem.temp_size_in_bytes),
                                 int(mem.output_size_in_bytes), int(mem.alias_size_in_bytes))
    else:  # refused: the donated state in and out, the temporaries the refusal names
        arg, out, alias = shard_bytes(args), state_bytes, state_bytes
        temp = _refused_temp_bytes(refused) or 0
    peak = arg + temp + out - alias
    n_params = pythia.count_params(args[0].params)
    flops = flops_per_token(mcfg, t, n_params) * b * t / topo.chips
    if doremi:
        flops *= 4 / 3  # the reference model's forward pass (2 of the 6 per parameter)
    plan = Plan(topology=topo.name, chips=topo.chips, mesh=dict(mesh.shape), batch_size=b,
                micro_batches=cfg.train.micro_batches, seq_len=t, remat=mcfg.remat,
                attention=_attention(mcfg, t, mesh, hlo),
                hbm_bytes_per_chip=topo.chip.hbm_bytes, argument_bytes=arg, temp_bytes=temp,
                output_bytes=out, alias_bytes=alias, peak_bytes=peak,
                fits=not refused and peak <= topo.chip.hbm_bytes, flops_per_chip=flops,
                collectives=count_collectives(hlo), compile_s=round(compile_s, 1), refused=refused,
                doremi=doremi)
    if roofline and not refused:
        _add_roofline(plan, cfg, devices, doremi, mcfg, topo)
    _cache_write(cache, key, plan)
    return plan


def _costs(cfg: Any, devices: list[Any], doremi: bool, layers: int) -> tuple[float, float] | None:
    """Compiler FLOPs and HBM bytes per chip of the step with ``layers`` unrolled layers; None
    where the compiler reports no costs (the GPU compiler without a device)."""
    step, args, _, _ = abstract_step(cfg, devices, doremi, {"num_layers": layers, "scan_layers": False})
    cost = step.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    if not cost:
        return None
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def _add_roofline(plan: Plan, cfg: Any, devices: list[Any], doremi: bool, mcfg: pythia.PythiaConfig,
                  topo: Topology) -> None:
    """``bytes(L) = bytes(1) + (L - 1) (bytes(2) - bytes(1))`` from two unrolled compiles; the
    bound is ``max(FLOPs / peak, bytes / bandwidth)`` and the MFU ceiling model FLOPs over it."""
    one = _costs(cfg, devices, doremi, 1)
    if one is None:
        return
    (f1, b1), (f2, b2) = one, _costs(cfg, devices, doremi, 2)
    layers = mcfg.num_layers
    compiler_flops = f1 + (layers - 1) * (f2 - f1)
    accessed = b1 + (layers - 1) * (b2 - b1)
    bound = max(max(compiler_flops, plan.flops_per_chip) / topo.chip.peak_flops,
                accessed / topo.chip.hbm_bandwidth)
    plan.bytes_accessed_per_chip = accessed
    plan.step_time_bound_s = bound
    plan.mfu_ceiling = plan.flops_per_chip / topo.chip.peak_flops / bound if bound > 0 else None


def fit_batch(cfg: Any, topo: Topology, doremi: bool = False, cache: str | None = None,
              most_rows_per_chip: int = 256) -> tuple[int, Plan | None]:
    """The largest ``train.batch_size`` (a multiple of the batch shards x micro-batches) whose
    step fits, by doubling then bisection over compiles; ``(0, None)`` when one row per shard
    does not fit."""
    data, fsdp, _ = sharding.mesh_shape(cfg.mesh, topo.chips)
    unit = data * fsdp * cfg.train.micro_batches
    limit = max(1, most_rows_per_chip * topo.chips // unit)
    plans: dict[int, Plan] = {}

    def fits(n: int) -> bool:
        trial = cfg.copy_and_resolve_references()
        trial.train.batch_size = n * unit
        plans[n] = compile_plan(trial, topo, doremi, roofline=False, cache=cache)
        return plans[n].fits

    lo, hi = 0, 1
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * unit, plans.get(lo)


def _cache_key(cfg: Any, topo: Topology, doremi: bool, roofline: bool) -> str:
    wanted = {k: to_dict(cfg)[k] for k in ("model", "train", "mesh", "optim", "schedule")}
    blob = json.dumps([wanted, topo.name, doremi, roofline, jax.__version__], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cache_read(cache: str | None, key: str) -> Plan | None:
    if not cache:
        return None
    path = Path(cache) / f"{key}.json"
    if not path.is_file():
        return None
    try:
        return Plan(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def _cache_write(cache: str | None, key: str, plan: Plan) -> None:
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        (Path(cache) / f"{key}.json").write_text(json.dumps(dataclasses.asdict(plan), indent=1) + "\n")
