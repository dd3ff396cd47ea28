"""The training state carried from step to step (and saved in checkpoints)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax
from flax import struct

from cpt_jax import sharding
from cpt_jax.model import pythia


@struct.dataclass
class TrainState:
    """``step`` t (int32 scalar, optimizer steps done), ``params`` theta (plain nested dict),
    ``opt_state`` (AdamW mu / nu / counts, fp32), ``extras`` (objective state, e.g. DoReMi's
    domain weights alpha; ``{}`` for plain next-token training)."""

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    extras: dict[str, Any]


def state_shardings(abstract: TrainState, mesh: Any) -> TrainState:
    """NamedShardings for every leaf: params by the logical-axis rules, optimizer moments and
    param-shaped extras like their parameter, ``step`` and other scalars replicated."""
    p = sharding.param_shardings(abstract.params, mesh)
    return TrainState(
        step=sharding.replicated(mesh),
        params=p,
        opt_state=sharding.like_params(abstract.opt_state, abstract.params, p, mesh),
        extras=sharding.like_params(abstract.extras, abstract.params, p, mesh),
    )


def abstract_state(model_config: pythia.PythiaConfig, tx: optax.GradientTransformation,
                   objective: Any = None) -> TrainState:
    """ShapeDtypeStructs of the whole train state (nothing allocated); ``objective`` supplies
    the extras (none when None)."""
    params = jax.eval_shape(lambda: pythia.init_params(model_config, jax.random.key(0)))
    extras = jax.eval_shape(objective.init_extras, params) if objective is not None else {}
    return TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=params,
                      opt_state=jax.eval_shape(tx.init, params), extras=extras)


def fresh_state(model_config: pythia.PythiaConfig, tx: optax.GradientTransformation,
                shard: TrainState, seed: int = 0, params: Any = None,
                objective: Any = None) -> TrainState:
    """Step 0 on the mesh: ``params`` (already placed with ``shard.params``) or Pythia's
    initialisation with ``seed``, a fresh optimizer state, the objective's initial extras
    (placed eagerly: a jitted init would bake captured arrays such as DoReMi's reference
    weights into the program as constants)."""
    if params is None:
        init = jax.jit(lambda k: pythia.init_params(model_config, k), out_shardings=shard.params)
        params = init(jax.random.key(seed))
    extras = objective.init_extras(params) if objective is not None else {}
    return TrainState(
        step=jax.device_put(np.int32(0), shard.step),
        params=params,
        opt_state=jax.jit(tx.init, out_shardings=shard.opt_state)(params),
        extras=jax.device_put(extras, shard.extras),
    )
