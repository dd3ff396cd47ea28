"""Next-token cross-entropy, per token and per domain, in fp32.

A batch carries ``tokens [B, T+1]``: inputs are ``tokens[:, :-1]``, targets ``tokens[:, 1:]``.
EOS (id 0) is an ordinary target (Pythia packs documents with no attention reset).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cpt_jax import sharding
from cpt_jax.model import pythia


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``-log softmax(logits)[target]`` per position, fp32: ``logsumexp(z) - z_y``."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


def next_token_losses(
    params: pythia.Params, tokens: jax.Array, config: pythia.PythiaConfig, vocab_chunk: int = 0
) -> jax.Array:
    """Per-token losses ``[B, T]`` (fp32) of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``.

    ``vocab_chunk > 0`` never materialises the full ``[B, T, V]`` fp32 logits: the sequence is
    processed in blocks of ``vocab_chunk`` positions inside a rematerialised scan, so the
    backward pass recomputes each block's logits instead of storing them.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    h = pythia.hidden_states(params, inputs, config)
    if vocab_chunk <= 0 or h.shape[1] <= vocab_chunk:
        return cross_entropy(pythia.unembed(params, h), targets)
    b, t, d = h.shape
    pad = (-t) % vocab_chunk
    hp = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, vocab_chunk, d).swapaxes(0, 1)
    hp = sharding.constrain(hp, "length", "batch", "length", "embed")
    tp = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, -1, vocab_chunk).swapaxes(0, 1)

    @jax.checkpoint
    def block(h_blk: jax.Array, t_blk: jax.Array) -> jax.Array:
        return cross_entropy(pythia.unembed(params, h_blk), t_blk)

    _, losses = jax.lax.scan(lambda c, x: (c, block(*x)), None, (hp, tp))
    return losses.swapaxes(0, 1).reshape(b, -1)[:, :t]


def domain_sums(
    token_losses: jax.Array, domain: jax.Array, num_domains: int, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Per-domain ``(sum of token losses [k], token count [k])`` for a batch.

    ``token_losses [B, T]``, ``domain [B]`` int ids; ``mask [B, T]`` (optional) selects tokens.
    Sums (not means) so that callers can reduce across devices and micro-batches first.
    """
    weights = jnp.ones_like(token_losses) if mask is None else mask.astype(jnp.float32)
    onehot = jax.nn.one_hot(domain, num_domains, dtype=jnp.float32)  # [B, k]
    loss_sums = jnp.einsum("bt,bk->k", token_losses * weights, onehot)
    counts = jnp.einsum("bt,bk->k", weights, onehot)
    return loss_sums, counts
