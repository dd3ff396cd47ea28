"""Causal self-attention kernels and rotary position embeddings (GPT-NeoX conventions).

Layout everywhere: ``[B, T, H, hd]``. Scores and softmax are computed in fp32 whatever the
compute dtype. Implementations:

- ``xla``: plain einsum attention, materialises ``[B, H, T, T]`` scores (CPU, tests, odd head sizes);
- ``chunked``: the same maths one block of queries at a time (``[B, H, C, T]`` at most, each
  block rematerialised in the backward pass, so memory grows linearly in T), for long sequences
  on hosts without a flash kernel (``auto`` picks it when T exceeds the chunk);
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``, flash attention on NVIDIA
  GPUs (bf16/fp16 only);
- ``splash``: the Pallas TPU splash-attention kernel that ships with JAX (a fused flash kernel
  with a causal block mask: fully masked blocks are skipped). Head sizes are zero-padded to a
  multiple of the 128-lane width and T to a multiple of 128 (both exact: zero q/k columns add
  nothing to q.k, zero v columns are sliced off, and causal queries never see padded keys).
  On a mesh the kernel runs per shard under ``shard_map``: rows over ``(data, fsdp)``, heads
  over ``tensor`` (Mosaic kernels cannot be partitioned automatically). It is compiled for real
  when the devices compiled for are TPUs (the mesh's platform, so a TPU slice compiled ahead of
  time on a CPU host gets the real kernel) and runs in Pallas interpret mode otherwise (slow;
  for tests). Head sizes under 64, or a JAX without the kernel, fall back to ``chunked`` with
  one printed line.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp

from cpt_jax import layout

Attention = Literal["auto", "xla", "chunked", "cudnn", "splash"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Attention)
LANES = 128  # TPU vector lane width: the splash kernel's head-size and block granularity
_SPLASH_MIN_HEAD = LANES // 2  # below this, padding to 128 lanes more than doubles the work
_printed: set[str] = set()


def rotary_cos_sin(
    positions: jax.Array, rotary_dim: int, base: float, scaling: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables ``[..., T, 2 * ceil(r/2)]`` for NeoX rotary on the first r dims of a head
    (``positions`` ``[T]``, or ``[B, T]`` for per-row positions).

    ``inv_freq_i = 1 / base**(2i / r)``; angles are the elementwise product ``pos * inv_freq``
    in fp32 (a matmul at reduced precision corrupts them). ``scaling > 1`` interpolates
    positions (``pos / scaling``) for long-context continuation.
    """
    inv_freq = 1.0 / (base ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    pos = positions.astype(jnp.float32) / scaling
    angles = pos[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x_r * cos + rotate_half(x_r) * sin`` on the first ``cos.shape[-1]`` dims of each head;
    ``cos`` / ``sin`` are ``[T, w]`` (shared by all rows) or ``[B, T, w]``."""
    width = cos.shape[-1]
    if width == 0:
        return x
    rot, rest = x[..., :width].astype(jnp.float32), x[..., width:]
    half = width // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    cos, sin = (cos[None], sin[None]) if cos.ndim == 2 else (cos, sin)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = (rot * cos + rotated * sin).astype(x.dtype)
    return jnp.concatenate([out, rest], axis=-1)


def _scores_softmax_values(
    q: jax.Array, k: jax.Array, v: jax.Array, q_offset: int | jax.Array, key_ok: jax.Array | None = None
) -> jax.Array:
    """Causal attention of queries starting at absolute position ``q_offset`` over all keys
    (those with ``key_ok [B, S]`` true, when given)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    q_pos = q_offset + jnp.arange(q.shape[1])
    k_pos = jnp.arange(k.shape[1])
    allowed = (q_pos[:, None] >= k_pos[None, :])[None, None]
    if key_ok is not None:
        allowed = allowed & key_ok[:, None, None, :]
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(v.dtype)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_offset: int | jax.Array,
                     key_ok: jax.Array) -> jax.Array:
    """Attention of new queries ``[B, t, H, hd]`` at cache slots ``q_offset ..`` over a key/value
    cache ``[B, S, H, hd]``: slot ``j`` is seen when ``j <= `` the query's slot and ``key_ok[b, j]``."""
    return _scores_softmax_values(q, k, v, q_offset, key_ok)


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


def _backend() -> str:
    """The platform compiled for: the context mesh's devices, else the default backend."""
    return layout.context_platform()


def _say_once(line: str) -> None:
    if line not in _printed:
        _printed.add(line)
        print(line, flush=True)


def resolve(
    implementation: str, head_dim: int, dtype: jnp.dtype, seq_len: int = 0, chunk: int = 512
) -> str:
    """``auto`` -> ``splash`` on TPU for head sizes the kernel runs; ``cudnn`` on GPU for
    bf16/fp16 and head sizes cuDNN takes; otherwise ``chunked`` when ``seq_len > chunk``
    (memory linear in T), else ``xla``. ``splash`` (asked for, or picked by ``auto`` on TPU)
    where the kernel cannot run becomes ``chunked`` with one printed line saying why."""
    backend = _backend()
    if implementation == "auto" and backend == "tpu":
        implementation = "splash"
    if implementation == "splash":
        why = splash_unsupported(head_dim)
        if why is None:
            return "splash"
        _say_once(f"attention: splash kernel not used ({why}); using chunked")
        return "chunked"
    if implementation != "auto":
        return implementation
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if backend == "gpu" and half and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "chunked" if seq_len > chunk else "xla"


def causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "xla", chunk: int = 512,
    block_q: int = 512, block_kv: int = 512,
) -> jax.Array:
    """Causal softmax attention with scale ``hd**-0.5``; inputs and output ``[B, T, H, hd]``.
    ``block_q`` / ``block_kv``: the splash kernel's query / key tiles (multiples of 128)."""
    if implementation == "xla":
        return _scores_softmax_values(q, k, v, 0)
    if implementation == "chunked":
        return _chunked(q, k, v, chunk)
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    if implementation == "splash":
        return splash(q, k, v, block_q, block_kv)
    raise ValueError(f"unknown attention implementation {implementation!r}")


# ---------------------------------------------------------------------------------------
# splash attention (Pallas TPU kernel shipped with JAX)


def _splash_lib() -> Any:
    """The splash-attention module, or None where this JAX has none (the path has moved
    between releases, so the import is guarded)."""
    try:
        from jax.experimental.pallas.ops.tpu import splash_attention as lib
    except Exception:  # noqa: BLE001 - absent, moved, or failing to import on this platform
        return None
    needed = ("make_splash_mha", "BlockSizes", "CausalMask", "MultiHeadMask")
    return lib if all(hasattr(lib, n) for n in needed) else None


def splash_unsupported(head_dim: int) -> str | None:
    """Why the splash kernel cannot run heads of ``head_dim`` here; None when it can."""
    if _splash_lib() is None:
        return f"this JAX ({jax.__version__}) has no Pallas TPU splash-attention kernel"
    if head_dim < _SPLASH_MIN_HEAD:
        return (f"head size {head_dim} is under {_SPLASH_MIN_HEAD}: padding it to {LANES} lanes "
                "would more than double the work")
    return None


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def splash_block(requested: int, padded_len: int) -> int:
    """The largest multiple of 128 that is at most ``requested`` and divides ``padded_len``
    (itself a multiple of 128)."""
    top = max(LANES, min(requested, padded_len) // LANES * LANES)
    return next(b for b in range(top, 0, -LANES) if padded_len % b == 0)


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, seq: int, block_q: int, block_kv: int, interpret: bool) -> Any:
    """A causal multi-head splash kernel for ``[H, seq, hd]`` inputs (cached per shape)."""
    lib = _splash_lib()
    mask = lib.MultiHeadMask([lib.CausalMask((seq, seq)) for _ in range(heads)])
    blocks = dict(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                  block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv)
    try:
        sizes = lib.BlockSizes(**blocks, block_q_dq=block_q, block_kv_dq=block_kv)
    except (TypeError, ValueError):  # releases whose backward is one fused kernel
        sizes = lib.BlockSizes(**blocks, use_fused_bwd_kernel=True)
    return lib.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                               interpret=interpret)


def splash(q: jax.Array, k: jax.Array, v: jax.Array, block_q: int = 512, block_kv: int = 512) -> jax.Array:
    """Causal attention through the splash kernel; ``[B, T, H, hd]`` in and out.

    The kernel takes ``[H, T, hd]`` per batch row (vmapped over the rows of a shard) with q
    pre-scaled by ``hd**-0.5``; hd is zero-padded to a multiple of 128 and T to a multiple of 128.
    Under a mesh each device runs it on its own rows and heads (``shard_map``)."""
    b, t, h, d = q.shape
    tp, dp = _round_up(t, LANES), _round_up(d, LANES)
    bq, bkv = splash_block(block_q, tp), splash_block(block_kv, tp)
    interpret = _backend() != "tpu"

    def prep(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, tp - t), (0, 0), (0, dp - d)))
        return x.transpose(0, 2, 1, 3)  # [B, H, T, hd]

    def per_shard(qs: jax.Array, ks: jax.Array, vs: jax.Array) -> jax.Array:
        kernel = _splash_kernel(qs.shape[1], tp, bq, bkv, interpret)
        return jax.vmap(kernel)(qs, ks, vs)

    scale = jnp.asarray(1.0 / math.sqrt(d), q.dtype)
    args = (prep(q * scale), prep(k), prep(v))
    mesh = layout.context_mesh()
    if not mesh.empty:
        spec = layout.activation_spec(args[0].shape, ("batch", "heads", "length", "head_dim"), mesh)
        per_shard = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                                  check_vma=False)
    out = per_shard(*args)
    return out.transpose(0, 2, 1, 3)[:, :t, :, :d].astype(v.dtype)
