"""Device-memory estimate of one training step, without allocating anything.

State bytes come from ``jax.eval_shape`` of the real params and optimizer state (exact).
Activation bytes follow a per-token count of what the backward pass keeps (``b`` = bytes of
the compute dtype, B x T tokens, L layers, d width, V vocabulary, c = vocab chunk)::

    state       = params (fp32, 4N) + AdamW mu, nu (8N) + fp32 grads (4N)
    weights     = compute-dtype copy of the weights (b N, when the compute dtype is not fp32)
    saved       = L * B*T * s(remat) * d * b       s: full 1 (the residual stream),
                                                   dots ~10 (+ qkv, out, fc1, fc2 outputs),
                                                   none ~20 (every LN, qkv, rotary, fc1, GELU)
    layer work  = B*T * 40 * d * b                 (one block's forward + backward live at once)
    attention   = xla only: B*H*T^2 * (4 + b) per live layer (scores fp32 + probs)
    logits      = B * min(T, c) * V * (4 + 4 + b)  (fp32 logits, fp32 dlogits, cast for matmul)

``compiled(...)`` instead lowers and compiles the real train step for the current backend from
abstract inputs and reads XLA's buffer assignment (exact for that backend; on GPU use it).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

import ours as ours_lib
from cpt_jax.model import pythia

_SAVED_PER_LAYER = {"full": 1.0, "dots": 10.0, "none": 20.0}
_LAYER_WORK = 40.0
GIB = 1024 ** 3


def analytic(c: pythia.PythiaConfig, batch: int, seq: int, vocab_chunk: int = 0,
             attention: str = "cudnn") -> dict[str, float]:
    """Byte counts per component (see the module docstring) and their ``total``."""
    o = ours_lib.OptSettings()
    tx = _tx(o)
    abstract = ours_lib.abstract_state(c, tx)
    params = ours_lib.tree_bytes(abstract.params)
    n = pythia.count_params(abstract.params)
    b = np.dtype(c.compute_dtype).itemsize
    tokens = batch * seq
    d, L, V, H = c.hidden_size, c.num_layers, c.vocab_size, c.num_heads
    out = {
        "params": float(params),
        "opt_state": float(ours_lib.tree_bytes(abstract.opt_state)),
        "grads": float(n * 4),
        "weights_copy": float(n * b if b != 4 else 0),
        "saved_activations": L * tokens * _SAVED_PER_LAYER[c.remat] * d * b,
        "layer_work": tokens * _LAYER_WORK * d * b,
        "attention_scores": float(batch * H * seq * seq * (4 + b)) if attention == "xla" else 0.0,
        "logits": float(batch * (min(seq, vocab_chunk) if vocab_chunk > 0 else seq) * V * (8 + b)),
    }
    out["total"] = sum(out.values())
    out["n_params"] = float(n)
    return out


def _tx(o: ours_lib.OptSettings) -> Any:
    from cpt_jax.optim import make_optimizer
    from cpt_jax.schedules import make_schedule

    c = ours_lib.opt_config(o)
    return make_optimizer(c.optim, make_schedule(c.schedule, c.optim.peak_lr, 100))


def compiled(c: pythia.PythiaConfig, batch: int, seq: int, vocab_chunk: int = 0) -> dict[str, float]:
    """XLA's memory analysis of the compiled train step on the current backend (no allocation)."""
    from cpt_jax import sharding
    from cpt_jax.schedules import make_schedule
    from cpt_jax.train.state import state_shardings
    from cpt_jax.train.step import NextTokenObjective, make_train_step

    o = ours_lib.OptSettings()
    tx = _tx(o)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    abstract = ours_lib.abstract_state(c, tx)
    shard = state_shardings(abstract, mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shard)
    bs = sharding.batch_sharding(mesh)
    batch_in = {"tokens": jax.ShapeDtypeStruct((batch, seq + 1), np.int32, sharding=bs),
                "domain": jax.ShapeDtypeStruct((batch,), np.int32, sharding=bs)}
    step = make_train_step(NextTokenObjective(c, 1, vocab_chunk), tx,
                           make_schedule(ours_lib.opt_config(o).schedule, o.lr, 100), shard, mesh)
    return memory_analysis(step.lower(state, batch_in).compile())


def memory_analysis(compiled_step: Any) -> dict[str, float]:
    """``arguments + outputs - aliased + temporaries`` of a compiled executable, in bytes."""
    m = compiled_step.memory_analysis()
    if m is None:
        return {}
    out = {k: float(getattr(m, f"{k}_size_in_bytes", 0)) for k in
           ("argument", "output", "alias", "temp", "generated_code")}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def report(presets: list[str], configs: list[pythia.PythiaConfig], batches: list[int], seq: int,
           vocab_chunk: int, attention: str, budget_gib: float, compile_too: bool) -> list[dict]:
    """Print one line per preset (components in GiB, fits or not) and return the rows."""
    rows = []
    print(f"memory estimate, seq {seq}, budget {budget_gib:.0f} GiB (params fp32 + AdamW + fp32 grads "
          f"+ activations); GiB")
    head = ("preset", "B", "remat", "N", "params", "adam", "grads", "w copy", "saved", "layer",
            "attn", "logits", "total", "fits")
    print(" ".join(f"{h:>8}" for h in head))
    for name, c, b in zip(presets, configs, batches):
        e = analytic(c, b, seq, vocab_chunk, attention)
        row = {"preset": name, "batch": b, "seq": seq, "remat": c.remat, "vocab_chunk": vocab_chunk,
               "analytic_bytes": e, "fits": e["total"] <= budget_gib * GIB}
        vals = [name, b, c.remat, f"{e['n_params'] / 1e9:.2f}B"] + [
            f"{e[k] / GIB:.1f}" for k in ("params", "opt_state", "grads", "weights_copy",
                                          "saved_activations", "layer_work", "attention_scores",
                                          "logits", "total")] + ["yes" if row["fits"] else "NO"]
        print(" ".join(f"{str(v):>8}" for v in vals))
        if compile_too:
            m = compiled(c, b, seq, vocab_chunk)
            row["compiled_bytes"] = m
            print(f"{'':>8} compiled on {jax.default_backend()}: total {m.get('total', 0) / GIB:.2f} GiB "
                  f"(arguments {m.get('argument', 0) / GIB:.2f}, temporaries {m.get('temp', 0) / GIB:.2f})")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# Cloud TPU plan: per chip, for a slice of chips and a (fsdp x tensor) mesh

# HBM per chip (GiB) and the smallest slices one can create, in chips, with their names
TPU_HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0}
TPU_SLICES = {
    "v4": [4, 8, 16, 32, 64, 128, 256],      # v4-8 = 4 chips (the name counts TensorCores)
    "v5e": [1, 4, 8, 16, 32, 64, 128, 256],  # v5litepod-8 = 8 chips (the name counts chips)
    "v5p": [4, 8, 16, 32, 64, 128, 256],     # v5p-8 = 4 chips (the name counts TensorCores)
}
USABLE = 0.9  # share of HBM the plan fills (XLA's runtime, fragmentation and temporaries keep the rest)
REMAT_ORDER = ("none", "dots", "full")  # least recompute first
TENSOR_SIZES = (1, 2, 4, 8)


def slice_name(gen: str, chips: int) -> str:
    """Cloud TPU accelerator type of a slice of ``chips`` chips (v4 / v5p count TensorCores)."""
    return f"v5litepod-{chips}" if gen == "v5e" else f"{gen}-{2 * chips}"


def per_chip(c: pythia.PythiaConfig, rows: int, seq: int, fsdp: int, tensor: int,
             vocab_chunk: int = 512, attention: str = "splash") -> dict[str, float]:
    """Bytes on one chip of a ``fsdp x tensor`` mesh; ``rows`` sequences per fsdp shard per
    micro-step (the rest of a global batch comes from train.micro_batches).

    state and the compute-dtype weight copy divide by fsdp * tensor; two layers' gathered
    weights are in flight (b * 12 d^2 / tensor each); of the saved activations the residual
    stream (1 of s units) is whole on every tensor shard and the rest divides by tensor; so does
    39/40 of the layer work and the logits' vocabulary."""
    e = analytic(c, rows, seq, vocab_chunk, attention)
    shards = fsdp * tensor
    b = np.dtype(c.compute_dtype).itemsize
    s = _SAVED_PER_LAYER[c.remat]
    out = {
        "state": (e["params"] + e["opt_state"] + e["grads"]) / shards,
        "weights": e["weights_copy"] / shards + 2 * b * 12 * c.hidden_size ** 2 / tensor,
        "saved_activations": e["saved_activations"] * (1 + (s - 1) / tensor) / s,
        "layer_work": e["layer_work"] * (1 + (_LAYER_WORK - 1) / tensor) / _LAYER_WORK,
        "attention_scores": e["attention_scores"] / tensor,
        "logits": e["logits"] / tensor,
    }
    out["total"] = sum(out.values())
    return out


def _mesh_ok(c: pythia.PythiaConfig, chips: int, tensor: int) -> bool:
    """fsdp must divide d (params' embed axis); tensor must divide heads, ffn and vocab."""
    fsdp = chips // tensor
    return (chips % tensor == 0 and c.hidden_size % fsdp == 0 and c.num_heads % tensor == 0
            and c.ffn_size % tensor == 0 and c.vocab_size % tensor == 0)


def tpu_plan(c: pythia.PythiaConfig, gen: str, seq: int = 2048, rows: int = 1,
             vocab_chunk: int = 512) -> dict[str, Any] | None:
    """The smallest slice of ``gen`` (then least remat, then smallest tensor axis) whose chips
    hold the full AdamW train state and a step of ``rows`` sequences per fsdp shard; None if
    none of :data:`TPU_SLICES` does."""
    import dataclasses

    budget = TPU_HBM_GIB[gen] * GIB * USABLE
    for chips in TPU_SLICES[gen]:
        for remat in REMAT_ORDER:
            cr = dataclasses.replace(c, remat=remat)
            for tensor in TENSOR_SIZES:
                if not _mesh_ok(c, chips, tensor):
                    continue
                e = per_chip(cr, rows, seq, chips // tensor, tensor, vocab_chunk)
                if e["total"] <= budget:
                    return {"gen": gen, "slice": slice_name(gen, chips), "chips": chips,
                            "fsdp": chips // tensor, "tensor": tensor, "remat": remat,
                            "bytes": e}
    return None


def tpu_table(presets: list[str], seq: int = 2048, rows: int = 1, vocab_chunk: int = 512) -> str:
    """A markdown table of :func:`tpu_plan` for each preset and TPU generation."""
    import ours as ours_lib_

    lines = ["| preset | " + " | ".join(f"{g} ({TPU_HBM_GIB[g]:.0f} GiB)" for g in TPU_HBM_GIB) + " |",
             "|---|" + "---|" * len(TPU_HBM_GIB)]
    for name in presets:
        c = ours_lib_.model_config(name, compute_dtype="bfloat16")
        cells = []
        for gen in TPU_HBM_GIB:
            p = tpu_plan(c, gen, seq, rows, vocab_chunk)
            cells.append("does not fit" if p is None else
                         f"{p['slice']}: fsdp {p['fsdp']} x tensor {p['tensor']}, remat {p['remat']}, "
                         f"{p['bytes']['total'] / GIB:.1f} GiB/chip")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Analytic memory per Pythia preset on Cloud TPU slices. It runs "
                                 "up to 40%% above what the compilers measure: bench/memory_plan.py (compiled) is "
                                 "the plan, this only picks where its search starts")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=1, help="sequences per fsdp shard per micro-step")
    ap.add_argument("--vocab-chunk", type=int, default=512)
    ap.add_argument("--presets", default="70m,160m,410m,1b,1.4b,2.8b,6.9b,12b")
    a = ap.parse_args()
    print(tpu_table(a.presets.split(","), a.seq, a.rows, a.vocab_chunk))
