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
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
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

    return make_optimizer(ours_lib.opt_config(o), 100)


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
