"""AdamW as Pythia / GPT-NeoX trains: decay mask, global-norm clipping, fp32 state, trainable masks.

The update for a parameter ``theta`` with gradient ``g`` at step ``t`` (lr ``eta_t`` from the
schedule, ``lambda`` = ``optim.weight_decay``, ``m`` = 1 where weight decay applies)::

    g     <- g * min(1, c / ||g||_2)          (global norm over all trainable leaves; c = grad_clip)
    mu_t  = b1 mu_{t-1} + (1 - b1) g          nu_t = b2 nu_{t-1} + (1 - b2) g^2
    u     = mu_t / (1 - b1^t) / (sqrt(nu_t / (1 - b2^t)) + eps) + lambda m theta
    theta <- theta - eta_t u

Weight decay follows GPT-NeoX (``get_params_for_weight_decay_optimization``): every weight
matrix *including both embeddings* decays; biases and LayerNorm scales/biases do not.
``mu``/``nu`` are always fp32, whatever the parameter dtype.

Trainable mask: ``trainable`` is a pytree with the params' structure whose leaves are either a
Python bool (the whole leaf trains or is frozen) or a boolean array broadcastable to the leaf
(e.g. ``[V, 1]`` to train only some embedding rows, as vocabulary expansion does). Frozen
entries get a zero gradient before clipping (they do not count in the global norm) and a zero
update after weight decay, so they never move.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cpt_jax import checks, tree_io
from cpt_jax.errors import UserError

Params = dict[str, Any]

_NO_DECAY_NAMES = ("bias", "scale")  # biases; LayerNorm weight is called "scale" here


def check_section(optim_cfg: Any) -> None:
    """The ``optim`` section: eta_max, the Adam betas, the non-finite allowance; one ``UserError``."""
    checks.positive_number("optim.peak_lr", optim_cfg.peak_lr)
    for name in ("b1", "b2"):
        checks.unit_interval(f"optim.{name}", optim_cfg[name], closed_top=False)
    checks.at_least_zero("optim.skip_nonfinite", optim_cfg.skip_nonfinite, "0 = stop at the first")
    checks.positive_number("optim.eps", optim_cfg.eps)
    for name, note in (("weight_decay", "0 = none"), ("grad_clip", "0 disables")):
        checks.at_least_zero(f"optim.{name}", optim_cfg[name], note)


def decay_mask(params: Params) -> Params:
    """True for leaves that weight decay applies to: every ``kernel`` and both embeddings;
    False for biases and LayerNorm parameters (``ln1``, ``ln2``, ``final_ln``)."""

    def rule(path: tuple, leaf: Any) -> bool:
        names = tree_io.path_name(path).split("/")
        if names[-1] in _NO_DECAY_NAMES or any(n in ("ln1", "ln2", "final_ln") for n in names):
            return False
        return True

    return jax.tree_util.tree_map_with_path(rule, params)


class _Empty(NamedTuple):
    pass


def _fp32_state(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Run ``inner`` on fp32 copies of gradients and params, so its state (mu, nu) is fp32."""

    def f32(tree: Any) -> Any:
        return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

    def init(params: Params) -> Any:
        return inner.init(f32(params))

    def update(updates: Any, state: Any, params: Params | None = None) -> tuple[Any, Any]:
        return inner.update(f32(updates), state, None if params is None else f32(params))

    return optax.GradientTransformation(init, update)


def _apply_trainable(trainable: Params) -> optax.GradientTransformation:
    """Multiply updates by the trainable mask (bool leaf or broadcastable bool array)."""

    def init(params: Params) -> _Empty:
        def check(path: tuple, m: Any, p: Any) -> None:
            try:
                np.broadcast_shapes(np.shape(m), p.shape)
            except ValueError:
                raise UserError(
                    f"trainable mask for {tree_io.path_name(path)} has shape {np.shape(m)}, "
                    f"not broadcastable to the parameter's {tuple(p.shape)}"
                ) from None

        try:
            jax.tree_util.tree_map_with_path(check, trainable, params)
        except ValueError as err:
            if isinstance(err, UserError):
                raise
            raise UserError(f"trainable mask does not match the params tree: {str(err).splitlines()[0]}") from None
        return _Empty()

    def update(updates: Any, state: _Empty, params: Params | None = None) -> tuple[Any, _Empty]:
        def one(m: Any, u: jax.Array) -> jax.Array:
            if isinstance(m, (bool, np.bool_)):
                return u if m else jnp.zeros_like(u)
            return jnp.where(jnp.asarray(m), u, jnp.zeros((), u.dtype))

        return jax.tree.map(one, trainable, updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(
    o: Any, schedule: optax.Schedule, trainable: Params | None = None
) -> optax.GradientTransformation:
    """AdamW from the ``optim`` config section ``o`` with learning rate ``schedule`` (eta_t,
    from ``cpt_jax.schedules.make_schedule``: built once, also what the loop logs).

    Chain: [trainable mask] -> clip_by_global_norm(grad_clip) (skipped when 0) -> Adam (b1, b2,
    eps; fp32 moments) -> + lambda * theta on ``decay_mask`` leaves -> * eta_t -> [trainable mask].
    """
    parts: list[optax.GradientTransformation] = []
    if trainable is not None:
        parts.append(_apply_trainable(trainable))
    if o.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip))
    parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps, mu_dtype=jnp.float32))
    if o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    if trainable is not None:
        parts.append(_apply_trainable(trainable))
    return _fp32_state(optax.chain(*parts))
