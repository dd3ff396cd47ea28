"""The one jitted train step: objective, gradient accumulation (scan), AdamW update.

For a global batch split into micro-batches ``b_1 .. b_M`` the step computes

    ctx, extras' = objective.prepare(theta, batch, extras)
    (L, aux), g  = sum_m  (objective.loss(theta, b_m, ctx), d/dtheta objective.loss(theta, b_m, ctx))
    theta'       = theta + AdamW(g)

with ``L`` the step loss (each micro-batch returns its share), gradients accumulated in fp32
inside a ``lax.scan``. Micro-batch ``m`` takes rows ``m, m + M, m + 2M, ...`` of the global batch,
so every device holds an equal slice of every micro-batch (no data movement to split).

A step whose loss, gradient norm or updated params are not finite is not applied: params,
optimizer state and extras stay as they were, only the step counter advances (the batch is
skipped), and the step's ``nonfinite`` metric is 1. The loop decides whether to go on.

With ``lawa.ema`` = beta > 0 the state also carries the EMA of the params, updated after every
step with the params the step leaves (``update_ema``).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cpt_jax import layout, losses, sharding
from cpt_jax.model import pythia
from cpt_jax.train.state import TrainState

Batch = dict[str, jax.Array]


class Objective(Protocol):
    """What the train step optimises (next-token CE by default; DoReMi's Group DRO plugs in).

    ``loss`` must return aux with ``domain_loss_sum [k]`` and ``domain_tokens [k]`` for
    per-domain logging; any other aux arrays are summed over micro-batches and logged too.
    """

    def init_extras(self, params: pythia.Params) -> dict[str, Any]: ...

    def prepare(
        self, params: pythia.Params, batch: Batch, extras: dict[str, Any]
    ) -> tuple[Any, dict[str, Any], dict[str, jax.Array]]: ...

    def loss(
        self, params: pythia.Params, micro_batch: Batch, ctx: Any
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...


class NextTokenObjective:
    """Mean next-token cross-entropy over all ``N = B * T`` target tokens of the global batch:
    ``L = sum_{b,t} l_{b,t} / N``; each micro-batch contributes its token-loss sum over ``N``."""

    def __init__(self, model_config: pythia.PythiaConfig, num_domains: int, vocab_chunk: int = 0):
        self.model_config = model_config
        self.num_domains = num_domains
        self.vocab_chunk = vocab_chunk

    def init_extras(self, params: pythia.Params) -> dict[str, Any]:
        return {}

    def prepare(self, params: pythia.Params, batch: Batch, extras: dict[str, Any]):
        b, t1 = batch["tokens"].shape
        return jnp.float32(b * (t1 - 1)), extras, {}

    def loss(self, params: pythia.Params, micro_batch: Batch, ctx: jax.Array):
        token_losses = losses.next_token_losses(
            params, micro_batch["tokens"], self.model_config, vocab_chunk=self.vocab_chunk
        )
        sums, counts = losses.domain_sums(token_losses, micro_batch["domain"], self.num_domains)
        return jnp.sum(token_losses) / ctx, {"domain_loss_sum": sums, "domain_tokens": counts}


def global_norm(tree: Any) -> jax.Array:
    """``||g||_2`` over all leaves, in fp32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def all_finite(tree: Any) -> jax.Array:
    """True when every element of every floating leaf is finite."""
    oks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(oks)) if oks else jnp.bool_(True)


def _select(ok: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where ``ok`` else ``old``, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def _f32(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def accumulate(objective: Objective, params: Any, batch: Batch, ctx: Any, micro_batches: int,
               mesh: Mesh | None = None, grad_shardings: Any = None) -> tuple[jax.Array, dict, Any]:
    """``(sum_m loss_m, sum_m aux_m, sum_m grad_m)`` over ``micro_batches`` strided slices.

    ``grad_shardings`` (the params' shardings) lays each gradient out like its parameter, so
    that under fsdp the cross-device sum is a reduce-scatter into each device's shard rather
    than an all-reduce of full-size gradients."""
    value_and_grad = jax.value_and_grad(objective.loss, has_aux=True)

    def grad_fn(p: Any, mb: Batch, c: Any) -> Any:
        out, grads = value_and_grad(p, mb, c)
        if grad_shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
        return out, grads

    if micro_batches == 1:
        (loss, aux), grads = grad_fn(params, batch, ctx)
        return loss, aux, _f32(grads)
    m = micro_batches
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1), batch)
    if mesh is not None:
        micro = jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))
    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: grad_fn(params, first, ctx))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

    def body(carry: Any, mb: Batch) -> tuple[Any, None]:
        out = grad_fn(params, mb, ctx)
        return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry, out), None

    ((loss, aux), grads), _ = jax.lax.scan(body, zeros, micro)
    return loss, aux, grads


def update_ema(ema: dict[str, Any], params: Any, beta: float) -> dict[str, Any]:
    """``theta_ema <- beta theta_ema + (1 - beta) theta`` in fp32, one more update counted; the
    first update (count 0) sets ``theta_ema = theta``: the EMA starts from the first params it sees."""
    first = ema["count"] == 0

    def one(e: jax.Array, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        return jnp.where(first, x, beta * e + (1.0 - beta) * x)

    return {"params": jax.tree.map(one, ema["params"], params), "count": ema["count"] + 1}


def make_train_step(
    objective: Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    shardings: TrainState,
    mesh: Mesh,
    micro_batches: int = 1,
    ema_beta: float = 0.0,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step(state, batch) -> (state', metrics)``: one ``jax.jit`` with the state's
    shardings in and out, the batch split over ``(data, fsdp)``, and the state donated, traced
    under the mesh (activations laid out by ``layout.ACTIVATION_RULES``); ``.lower(state,
    batch)`` lowers it ahead of time, from arrays or ``ShapeDtypeStruct``s with shardings.

    metrics: ``loss``, ``grad_norm`` (global L2 norm of g before clipping), ``lr`` (eta_t),
    ``nonfinite`` (1.0 when the update was not applied, see the module docstring), the
    objective's aux sums and its ``prepare`` metrics (all replicated scalars / vectors).
    A state with an EMA (``state.ema``) gets it updated with ``ema_beta`` (``update_ema``).
    """

    def step_fn(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        ctx, extras, metrics = objective.prepare(state.params, batch, state.extras)
        loss, aux, grads = accumulate(objective, state.params, batch, ctx, micro_batches, mesh,
                                      shardings.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
        out = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "nonfinite": jnp.where(ok, 0.0, 1.0).astype(jnp.float32)}
        out.update(aux)
        out.update(metrics)
        kept = _select(ok, (params, opt_state, extras), (state.params, state.opt_state, state.extras))
        ema = update_ema(state.ema, kept[0], ema_beta) if state.ema else state.ema
        new = TrainState(step=state.step + 1, params=kept[0], opt_state=kept[1], extras=kept[2], ema=ema)
        return new, out

    jitted = jax.jit(
        step_fn,
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    return layout.OnMesh(jitted, mesh)
