"""Causal self-attention kernels and rotary position embeddings (GPT-NeoX conventions).

Layout everywhere: ``[B, T, H, hd]``. Scores and softmax are computed in fp32 whatever the
compute dtype. Implementations:

- ``xla``: plain einsum attention, materialises ``[B, H, T, T]`` scores (CPU, tests, odd head sizes);
- ``chunked``: the same maths one block of queries at a time (``[B, H, C, T]`` at most, each
  block rematerialised in the backward pass, so memory grows linearly in T), for long sequences
  on hosts without a flash kernel (``auto`` picks it when T exceeds the chunk);
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``, flash attention on NVIDIA
  GPUs (bf16/fp16 only).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn")


def rotary_cos_sin(
    positions: jax.Array, rotary_dim: int, base: float, scaling: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables ``[T, 2 * ceil(r/2)]`` for NeoX rotary on the first r dims of a head.

    ``inv_freq_i = 1 / base**(2i / r)``; angles are the elementwise product ``pos * inv_freq``
    in fp32 (a matmul at reduced precision corrupts them). ``scaling > 1`` interpolates
    positions (``pos / scaling``) for long-context continuation.
    """
    inv_freq = 1.0 / (base ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    pos = positions.astype(jnp.float32) / scaling
    angles = pos[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x_r * cos + rotate_half(x_r) * sin`` on the first ``cos.shape[-1]`` dims of each head."""
    width = cos.shape[-1]
    if width == 0:
        return x
    rot, rest = x[..., :width].astype(jnp.float32), x[..., width:]
    half = width // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    out = (rot * cos + rotated * sin).astype(x.dtype)
    return jnp.concatenate([out, rest], axis=-1)


def _scores_softmax_values(q: jax.Array, k: jax.Array, v: jax.Array, q_offset: int | jax.Array) -> jax.Array:
    """Causal attention of queries starting at absolute position ``q_offset`` over all keys."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    q_pos = q_offset + jnp.arange(q.shape[1])
    k_pos = jnp.arange(k.shape[1])
    causal = q_pos[:, None] >= k_pos[None, :]
    scores = jnp.where(causal[None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(v.dtype)


def _chunked(q: jax.Array, k: jax.Array, v: jax.Array, chunk: int) -> jax.Array:
    b, t, h, d = q.shape
    if t <= chunk:
        return _scores_softmax_values(q, k, v, 0)
    pad = (-t) % chunk
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    blocks = qp.reshape(b, (t + pad) // chunk, chunk, h, d).swapaxes(0, 1)
    offsets = jnp.arange(blocks.shape[0]) * chunk
    # rematerialised per block: the backward pass recomputes a block's [B, H, C, T] scores
    # instead of keeping all of them (which would be B * H * T * T again)
    block_fn = jax.checkpoint(lambda qb, off: _scores_softmax_values(qb, k, v, off))
    out = jax.lax.map(lambda qo: block_fn(qo[0], qo[1]), (blocks, offsets))
    return out.swapaxes(0, 1).reshape(b, t + pad, h, d)[:, :t]


def resolve(
    implementation: str, head_dim: int, dtype: jnp.dtype, seq_len: int = 0, chunk: int = 512
) -> str:
    """``auto`` -> ``cudnn`` on GPU for bf16/fp16 and head sizes cuDNN takes; otherwise
    ``chunked`` when ``seq_len > chunk`` (memory linear in T), else ``xla``."""
    if implementation != "auto":
        return implementation
    on_gpu = jax.default_backend() == "gpu"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if on_gpu and half and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "chunked" if seq_len > chunk else "xla"


def causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "xla", chunk: int = 512
) -> jax.Array:
    """Causal softmax attention with scale ``hd**-0.5``; inputs and output ``[B, T, H, hd]``."""
    if implementation == "xla":
        return _scores_softmax_values(q, k, v, 0)
    if implementation == "chunked":
        return _chunked(q, k, v, chunk)
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    raise ValueError(f"unknown attention implementation {implementation!r}")
