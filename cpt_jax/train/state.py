"""The training state carried from step to step (and saved in checkpoints)."""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import struct


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
    from cpt_jax import sharding

    p = sharding.param_shardings(abstract.params, mesh)
    return TrainState(
        step=sharding.replicated(mesh),
        params=p,
        opt_state=sharding.like_params(abstract.opt_state, abstract.params, p, mesh),
        extras=sharding.like_params(abstract.extras, abstract.params, p, mesh),
    )
