"""The training state carried from step to step (and saved in checkpoints), and where a run's
first state comes from (``start_state``: resume, ``train.init_from`` or a fresh start)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from cpt_jax import sharding, storage, tree_io
from cpt_jax.errors import UserError
from cpt_jax.model import pythia
from cpt_jax.model.checkpoint import load_params, source_config
from cpt_jax.train.resume import restore_newest

# architecture a train.init_from checkpoint must share with cfg.model (num_heads is not implied
# by any tensor's shape; the context and rotary base may change on purpose)
_ARCH_FIELDS = ("num_heads", "use_parallel_residual", "rotary_pct", "hidden_act", "attention_bias")


@struct.dataclass
class TrainState:
    """``step`` t (int32 scalar, optimizer steps done), ``params`` theta (plain nested dict),
    ``opt_state`` (AdamW mu / nu / counts, fp32), ``extras`` (objective state, e.g. DoReMi's
    domain weights alpha; ``{}`` for plain next-token training), ``ema`` (the online EMA of
    the params, ``init_ema``; ``{}`` when ``lawa.ema`` is 0)."""

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    extras: dict[str, Any]
    ema: dict[str, Any] = struct.field(default_factory=dict)


def init_ema(params: Any) -> dict[str, Any]:
    """The EMA before its first update: ``{"params": theta_ema (fp32), "count": n}`` with n = 0
    updates so far (the first update sets theta_ema to the params it sees, ``step.update_ema``).
    theta_ema is a copy even of fp32 params: the step donates both, so they must not share a buffer."""
    copy = lambda p: jnp.array(p, dtype=jnp.float32, copy=True)  # noqa: E731
    return {"params": jax.tree.map(copy, params), "count": np.int32(0)}


def ema_params(state: TrainState) -> Any:
    """theta_ema cast to the params' dtypes, or None when the EMA is off or not updated yet."""
    if not state.ema or int(jax.device_get(state.ema["count"])) == 0:
        return None
    return jax.tree.map(lambda e, p: e.astype(p.dtype), state.ema["params"], state.params)


def state_shardings(abstract: TrainState, mesh: Any) -> TrainState:
    """NamedShardings for every leaf: params by the logical-axis rules, optimizer moments,
    param-shaped extras and the EMA like their parameter, ``step`` and other scalars replicated."""
    p = sharding.param_shardings(abstract.params, pythia.logical_axes(abstract.params), mesh)
    return TrainState(
        step=sharding.replicated(mesh),
        params=p,
        opt_state=sharding.like_params(abstract.opt_state, abstract.params, p, mesh),
        extras=sharding.like_params(abstract.extras, abstract.params, p, mesh),
        ema=sharding.like_params(abstract.ema, abstract.params, p, mesh),
    )


def abstract_state(model_config: pythia.PythiaConfig, tx: optax.GradientTransformation,
                   objective: Any = None, ema: bool = False) -> TrainState:
    """ShapeDtypeStructs of the whole train state (nothing allocated); ``objective`` supplies
    the extras (none when None); ``ema``: whether the state carries the params' EMA."""
    params = jax.eval_shape(lambda: pythia.init_params(model_config, jax.random.key(0)))
    extras = jax.eval_shape(objective.init_extras, params) if objective is not None else {}
    return TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=params,
                      opt_state=jax.eval_shape(tx.init, params), extras=extras,
                      ema=jax.eval_shape(init_ema, params) if ema else {})


def fresh_state(model_config: pythia.PythiaConfig, tx: optax.GradientTransformation,
                shard: TrainState, seed: int = 0, params: Any = None,
                objective: Any = None) -> TrainState:
    """Step 0 on the mesh: ``params`` (already placed with ``shard.params``) or Pythia's
    initialisation with ``seed``, a fresh optimizer state, the objective's initial extras
    (placed eagerly: a jitted init would bake captured arrays such as DoReMi's reference
    weights into the program as constants), and a fresh EMA when ``shard`` has one."""
    if params is None:
        init = jax.jit(lambda k: pythia.init_params(model_config, k), out_shardings=shard.params)
        params = init(jax.random.key(seed))
    extras = objective.init_extras(params) if objective is not None else {}
    return TrainState(
        step=jax.device_put(np.int32(0), shard.step),
        params=params,
        opt_state=jax.jit(tx.init, out_shardings=shard.opt_state)(params),
        extras=jax.device_put(extras, shard.extras),
        ema=jax.jit(init_ema, out_shardings=shard.ema)(params) if shard.ema else {},
    )


def check_init_from(path: str, abstract: Any, mcfg: pythia.PythiaConfig) -> None:
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
        name = tree_io.path_name(key)
        if key not in flat_p or tuple(flat_p[key].shape) != tuple(leaf.shape):
            got = tuple(flat_p[key].shape) if key in flat_p else "missing"
            raise UserError(
                f"train.init_from {path}: parameter {name} is {got}, the config's model needs "
                f"{tuple(leaf.shape)}"
            )


def init_params_from(path: str, abstract: Any, shardings: Any) -> Any:
    """Weights of ``train.init_from`` (checked by ``check_init_from``), restored straight into
    ``shardings`` (each process reads its own shards) and cast to the model's dtypes."""
    params, _ = load_params(path, shardings, hint="train.init_from needs finite weights")
    if not all(isinstance(x, jax.Array) and x.sharding == s for x, s in
               zip(jax.tree.leaves(params), jax.tree.leaves(shardings))):  # a Hugging Face dir
        params = sharding.put_global(jax.tree.map(np.asarray, params), shardings)
    cast = jax.jit(lambda p: jax.tree.map(lambda x, a: x.astype(a.dtype), p, abstract),
                   out_shardings=shardings)
    return cast(params)


def start_state(plan: Any, run: Any, resumed: int | None, checkpoints: Any, *, init_from: str,
                seed: int, timeout_s: float) -> tuple[TrainState, int | None]:
    """The run's first state and the step it resumed from (None when it did not), in this
    order of precedence: the newest restorable checkpoint at or before ``resumed`` (params,
    optimizer state, extras, step; the data source refuses changed domain ids), the weights
    of ``init_from`` with a fresh optimizer state at step 0, Pythia's initialisation with
    ``seed``. ``plan`` is the loop's plan (model, optimizer, objective, shapes, shardings)."""
    if resumed is None:
        params = init_params_from(init_from, plan.abstract.params, plan.shard.params) if init_from else None
        return fresh_state(plan.mcfg, plan.tx, plan.shard, seed, params, plan.objective), None
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          plan.abstract, plan.shard)
    with storage.Deadline(timeout_s, f"restoring from {run.checkpoints}"):
        state, meta, resumed = restore_newest(checkpoints, run, resumed, target)
    if isinstance(meta.get("data"), dict) and "domains" in meta["data"]:
        plan.data.resume_step(meta["data"])  # refuses a checkpoint whose domain ids differ
    # A step saved without extras or EMA (orbax writes no empty tree: the run's objective kept
    # none then, or lawa.ema was 0) restores them as the target's ShapeDtypeStructs; they start
    # afresh from the restored params, as at step 0 (the EMA from the first params after this).
    if _unrestored(state.extras):
        extras = jax.device_put(plan.objective.init_extras(state.params), plan.shard.extras)
        state = state.replace(extras=extras)
    if _unrestored(state.ema):
        state = state.replace(ema=_ema_at_resume(checkpoints, resumed, state.params, plan.shard.ema))
    return state, resumed


def _unrestored(tree: Any) -> bool:
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def _ema_at_resume(checkpoints: Any, step: int, params: Any, shardings: dict[str, Any]) -> dict[str, Any]:
    """The EMA of a step saved without an ``ema`` item: the one a checkpoint written before the
    EMA joined the train state kept in its ``lawa`` item (fp32 params; its update count taken
    as the step), else a fresh one."""
    old = (checkpoints.restore_host_item(step, "lawa") or {}).get("ema")
    if old is None:
        return jax.jit(init_ema, out_shardings=shardings)(params)
    f32 = jax.tree.map(lambda x: np.asarray(x, np.float32), old)
    return {"params": sharding.put_global(f32, shardings["params"]),
            "count": jax.device_put(np.int32(step), shardings["count"])}
