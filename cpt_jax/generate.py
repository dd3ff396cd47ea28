"""Text generation in JAX with a key/value cache, over the same param dict training uses.

Prompts of different lengths share a batch by left padding: row ``r`` of a batch padded to
``P`` tokens holds its prompt in slots ``P - n_r .. P - 1``, pad slots are masked out of
attention, and each row's rotary positions count from its own first token (``0 .. n_r - 1``),
so a padded row computes what it would alone. The cache holds ``S = P + N`` slots per layer
(``N`` the new-token budget rounded up to the decode chunk); the prompt fills slots ``0 .. P - 1``
in one prefill, and each new token is one more slot.

Compiles: prompts are sorted by length and batched ``batch_size`` rows at a time (short batches
padded with dummy rows), ``P`` is rounded up to a power of two, so one prefill compiles per
``(B, P, S)`` bucket and one decode loop per ``(B, S)``: a ``lax.scan`` of ``chunk`` tokens.
Between chunks the host checks EOS and stop strings and stops when every row is done.

Sampling: greedy (``temperature = 0``, the default) or ``softmax(logits / temperature)``
restricted to the ``top_k`` most likely tokens and then to the smallest set whose probability
reaches ``top_p`` (the Hugging Face order), drawn with ``jax.random`` from ``seed``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from cpt_jax import checks
from cpt_jax.errors import UserError
from cpt_jax.model import attention as attn_lib
from cpt_jax.model import pythia

Cache = dict[str, jax.Array]  # k, v [L, B, S, H, hd]; ok [B, S] (slot holds a real token)
MIN_PROMPT = 8  # smallest prompt bucket
CHUNK = 32  # tokens decoded per compiled loop between host checks


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy when ``temperature == 0``; ``top_k = 0`` keeps every
    token, ``top_p = 1`` the whole distribution."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.temperature < float("inf"):
            raise UserError(f"temperature must be finite and >= 0 (0 = greedy), got {self.temperature}")
        checks.at_least_zero("top_k", self.top_k, "0 = all tokens")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")


def init_cache(config: pythia.PythiaConfig, batch: int, slots: int) -> Cache:
    """An empty cache of ``slots`` positions for ``batch`` rows, in the compute dtype."""
    shape = (config.num_layers, batch, slots, config.num_heads, config.head_dim)
    dt = jnp.dtype(config.compute_dtype)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt), "ok": jnp.zeros((batch, slots), bool)}


def extend(
    params: pythia.Params, cache: Cache, tokens: jax.Array, positions: jax.Array, valid: jax.Array,
    start: int | jax.Array, config: pythia.PythiaConfig,
) -> tuple[jax.Array, Cache]:
    """Run ``tokens [B, t]`` (rotary ``positions [B, t]``; ``valid [B, t]`` false for padding)
    into cache slots ``start .. start + t - 1``: the final-LayerNorm states ``[B, t, d]`` and the
    updated cache. Each new token attends to the real tokens of earlier slots and itself."""
    c = config
    cdt = jnp.dtype(c.compute_dtype)
    cos, sin = attn_lib.rotary_cos_sin(positions, c.rotary_dim, c.rotary_emb_base, c.rope_scaling)
    ok = jax.lax.dynamic_update_slice(cache["ok"], valid.astype(bool), (0, start))
    x = jnp.take(params["embed_in"], tokens, axis=0).astype(cdt)

    def layer(h, inputs):
        p, kc, vc = inputs
        q, k, v = pythia.attention_inputs(pythia.layer_norm(h, p["ln1"], c.layer_norm_eps), p, cos, sin, c)
        kc = jax.lax.dynamic_update_slice(kc, k.astype(kc.dtype), (0, start, 0, 0))
        vc = jax.lax.dynamic_update_slice(vc, v.astype(vc.dtype), (0, start, 0, 0))
        o = attn_lib.cached_attention(q, kc, vc, start, ok)
        return pythia.block_output(h, o, p, c), (kc, vc)

    x, (k, v) = jax.lax.scan(layer, x, (params["layers"], cache["k"], cache["v"]))
    return pythia.layer_norm(x, params["final_ln"], c.layer_norm_eps), {"k": k, "v": v, "ok": ok}


def choose(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    """Next token ids ``[B]`` from fp32 ``logits [B, V]``."""
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    lowest = jnp.finfo(jnp.float32).min
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, lowest, logits)
    if sampling.top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
        kept = jnp.where(before < sampling.top_p, ordered, jnp.inf)
        logits = jnp.where(logits < kept.min(axis=-1, keepdims=True), lowest, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=16)
def _prefill_fn(config: pythia.PythiaConfig) -> Callable:
    def prefill(params, cache, tokens, positions, valid):
        h, cache = extend(params, cache, tokens, positions, valid, 0, config)
        return pythia.unembed(params, h[:, -1]), cache

    return jax.jit(prefill, donate_argnums=1)


@functools.lru_cache(maxsize=16)
def _decode_fn(config: pythia.PythiaConfig, sampling: Sampling, steps: int, eos_id: int) -> Callable:
    """Jitted: ``steps`` tokens chosen and run into the cache, one ``lax.scan``."""

    def decode(params, cache, logits, pos, slot, key, done):
        def step(carry, step_key):
            cache, logits, pos, slot, done = carry
            tok = jnp.where(done, max(eos_id, 0), choose(logits, step_key, sampling))  # finished rows idle
            done = done | (tok == eos_id)
            ones = jnp.ones_like(tok, bool)[:, None]
            h, cache = extend(params, cache, tok[:, None], pos[:, None], ones, slot, config)
            return (cache, pythia.unembed(params, h[:, 0]), pos + 1, slot + 1, done), tok

        carry, toks = jax.lax.scan(step, (cache, logits, pos, slot, done), jax.random.split(key, steps))
        return carry, toks.T

    return jax.jit(decode, donate_argnums=1)


def _bucket(n: int) -> int:
    size = MIN_PROMPT
    while size < n:
        size *= 2
    return size


def with_compute_dtype(config: pythia.PythiaConfig, dtype: DTypeLike | None) -> pythia.PythiaConfig:
    """``config`` computing in ``dtype`` (``jnp.bfloat16``, ``np.float32``, ``"float32"``; None keeps it)."""
    return config if dtype is None else dataclasses.replace(config, compute_dtype=checks.dtype_name("dtype", dtype))


def generate_ids(
    params: pythia.Params,
    config: pythia.PythiaConfig,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    eos_id: int | None = 0,
    batch_size: int = 8,
    done: Callable[[int, list[int]], bool] | None = None,
    chunk: int = CHUNK,
    dtype: DTypeLike | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (in input order), at most ``max_new_tokens``, without the
    EOS that ended a row. ``done(i, ids)`` (checked between chunks of ``chunk`` tokens) ends
    prompt ``i`` early, e.g. on a stop string: its ids then end with the chunk where it held.
    ``eos_id=None`` never stops on EOS. ``dtype``: the compute dtype (default: the config's;
    ``jnp.bfloat16``, ``np.float32`` or ``"float32"``)."""
    checks.positive("max_new_tokens", max_new_tokens)
    checks.positive("batch_size", batch_size)
    checks.positive("chunk", chunk)
    config = with_compute_dtype(config, dtype)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise UserError(f"prompt {i} has no tokens")
        bad = [t for t in p if not 0 <= t < config.vocab_size]
        if bad:
            raise UserError(f"prompt {i}: token id {bad[0]} is outside the model's vocabulary of {config.vocab_size}")
    stop_id = -1 if eos_id is None else eos_id
    chunk = min(chunk, max_new_tokens)
    n_new = -(-max_new_tokens // chunk) * chunk
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    key = jax.random.key(seed)
    for b0 in range(0, len(order), batch_size):
        rows = order[b0:b0 + batch_size]
        key, batch_key = jax.random.split(key)
        got = _generate_batch(params, config, [list(prompts[i]) for i in rows], n_new, max_new_tokens,
                              sampling, batch_key, stop_id, batch_size, chunk,
                              None if done is None else (lambda r, ids: done(rows[r], ids)))
        for r, i in enumerate(rows):
            out[i] = got[r]
    return out


def _generate_batch(params, config, prompts, n_new, max_new, sampling, key, eos_id, batch_size, chunk, done_fn):
    P = _bucket(max(len(p) for p in prompts))
    tokens = np.full((batch_size, P), max(eos_id, 0), np.int32)
    valid = np.zeros((batch_size, P), bool)
    lengths = np.ones(batch_size, np.int32)
    for r, p in enumerate(prompts):
        tokens[r, P - len(p):], valid[r, P - len(p):], lengths[r] = p, True, len(p)
    valid[len(prompts):, -1] = True  # dummy rows: one token, already done
    positions = np.maximum(np.arange(P)[None, :] - (P - lengths[:, None]), 0).astype(np.int32)
    cache = init_cache(config, batch_size, P + n_new)
    logits, cache = _prefill_fn(config)(params, cache, tokens, positions, valid)
    decode = _decode_fn(config, sampling, chunk, eos_id)
    finished = np.arange(batch_size) >= len(prompts)
    keep = np.full(batch_size, max_new)  # a row's tokens after it finished are idle filler
    new = np.zeros((batch_size, 0), np.int32)
    pos, slot = jnp.asarray(lengths), jnp.asarray(P, jnp.int32)
    for c in range(n_new // chunk):
        (cache, logits, pos, slot, done_dev), toks = decode(
            params, cache, logits, pos, slot, jax.random.fold_in(key, c), jnp.asarray(finished))
        new = np.concatenate([new, np.asarray(toks)], axis=1)
        finished = np.asarray(done_dev) | (new.shape[1] >= max_new)
        if done_fn is not None:
            for r in range(len(prompts)):
                if not finished[r] and done_fn(r, _until_eos(new[r, :max_new], eos_id)):
                    finished[r], keep[r] = True, min(keep[r], new.shape[1])
        if finished.all():
            break
    return [_until_eos(new[r, :keep[r]], eos_id) for r in range(len(prompts))]


def _until_eos(ids: np.ndarray, eos_id: int) -> list[int]:
    hits = np.flatnonzero(ids == eos_id)
    return ids[: hits[0] if len(hits) else len(ids)].tolist()


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (lm-eval-harness's cut)."""
    for s in stop:
        if s:
            text = text.split(s)[0]
    return text


def generate_text(
    params: pythia.Params,
    config: pythia.PythiaConfig,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    stop: Sequence[str] = (),
    seed: int = 0,
    eos_id: int | None = 0,
    batch_size: int = 8,
    dtype: DTypeLike | None = None,
) -> list[str]:
    """Completions of text prompts (a ``tokenizers.Tokenizer``; no special tokens added), cut at
    the first stop string; special tokens are dropped from the decoded text."""
    ids = [e.ids for e in tokenizer.encode_batch(list(prompts), add_special_tokens=False)]
    decode = lambda toks: tokenizer.decode(toks, skip_special_tokens=True)
    hit = (lambda i, toks: any(s and s in decode(toks) for s in stop)) if stop else None
    new = generate_ids(params, config, ids, max_new_tokens, sampling, seed, eos_id, batch_size, hit,
                       dtype=dtype)
    return [cut_at_stop(decode(toks), stop) for toks in new]
