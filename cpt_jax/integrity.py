"""Checkpoint integrity: a digest of every array, recorded when saved and checked when read.

The digest of one array is two 32-bit sums over its elements' bit patterns, each weighted by a
different odd function of the element's position (row-major index), so any change of any one
element changes it. Sums modulo 2**32 do not depend on the order of addition: the digest is
the same whether computed by jit over a sharded array (any mesh, any process count) or by
numpy over host chunks, so a checkpoint saved on 256 chips is checked on one CPU. The same pass
counts the non-finite elements of float arrays.

A training step records ``{"params": {leaf: hex}, "opt_state": ..., "extras": ..., "ema": ...}`` in its
``meta`` item, with the run's record (``cpt_jax.run_dir.run_record``) and the model; a params
checkpoint records ``digest.json`` inside its params item. Readers compare and refuse a
mismatch in one line naming the leaf.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from cpt_jax.errors import UserError
from cpt_jax.tree_io import path_name

DIGEST_FILE = "digest.json"  # inside a params checkpoint's item
_M1, _A1, _M2, _A2 = 0x9E3779B1, 0x7F4A7C15, 0x85EBCA6B, 0xC2B2AE35
_CHUNK = 1 << 16  # numpy elements per chunk (its temporaries stay a few hundred KiB)


def _words_np(x: np.ndarray) -> np.ndarray:
    """The raveled elements' bit patterns as uint32 (64-bit ones folded: lo ^ hi * M)."""
    x = np.ascontiguousarray(x).ravel()
    size = x.dtype.itemsize
    if size == 8:
        pair = x.view(np.uint32).reshape(-1, 2)
        return pair[:, 0] ^ (pair[:, 1] * np.uint32(_M2))
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[size]).astype(np.uint32)


def _sums_np(words: np.ndarray, start: int) -> tuple[int, int]:
    wide = start + words.size > 2**32
    i = np.arange(start, start + words.size, dtype=np.uint64 if wide else np.uint32).astype(np.uint32)
    w1 = i * np.uint32(_M1) + np.uint32(_A1) | np.uint32(1)
    w2 = i * np.uint32(_M2) + np.uint32(_A2) | np.uint32(1)
    rot = (words << np.uint32(13)) | (words >> np.uint32(19))
    return (int(np.sum(words * w1, dtype=np.uint32)), int(np.sum(rot * w2, dtype=np.uint32)))


def array_digest_np(x: Any) -> tuple[str, int]:
    """``(digest hex, non-finite count)`` of one host array, computed in chunks."""
    x = np.asarray(x)
    flat = x.reshape(-1)
    s1 = s2 = bad = 0
    for start in range(0, flat.size, _CHUNK):
        part = flat[start:start + _CHUNK]
        a, b = _sums_np(_words_np(part), start)
        s1, s2 = (s1 + a) % 2**32, (s2 + b) % 2**32
        if np.issubdtype(part.dtype, np.floating) or part.dtype.name == "bfloat16":
            bad += int(np.count_nonzero(~np.isfinite(part.astype(np.float32))))
    return f"{s1:08x}{s2:08x}", bad


def _leaf_jax(x: Any) -> Any:
    import jax
    import jax.numpy as jnp

    size = jnp.dtype(x.dtype).itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    idx = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for d in reversed(range(x.ndim)):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) * jnp.uint32(stride % 2**32)
        stride *= x.shape[d]
    w1 = idx * jnp.uint32(_M1) + jnp.uint32(_A1) | jnp.uint32(1)
    w2 = idx * jnp.uint32(_M2) + jnp.uint32(_A2) | jnp.uint32(1)
    rot = (words << jnp.uint32(13)) | (words >> jnp.uint32(19))
    s1 = jnp.sum(words * w1, dtype=jnp.uint32)
    s2 = jnp.sum(rot * w2, dtype=jnp.uint32)
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    bad = jnp.sum(~jnp.isfinite(x), dtype=jnp.uint32) if floating else jnp.uint32(0)
    return jnp.stack([s1, s2, bad])


_JIT: list[Any] = []


def _jitted() -> Any:
    """One jitted digest function per process (jax caches its compilations by input layout)."""
    if not _JIT:
        import jax

        _JIT.append(jax.jit(lambda xs: [_leaf_jax(x) for x in xs]))
    return _JIT[0]


def _host(x: Any) -> np.ndarray:
    """A small replicated result as numpy (also where it is not fully addressable)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(x.addressable_shards[0].data)


def tree_digest(tree: Any) -> tuple[dict[str, str], dict[str, int]]:
    """``({leaf: digest hex}, {leaf: non-finite count})`` of a tree of arrays (jax arrays of any
    sharding, or host arrays); every process must call it for a tree of global arrays."""
    import jax

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        return {}, {}
    names = [path_name(p) for p, _ in flat]
    leaves = [x for _, x in flat]
    if not any(isinstance(x, jax.Array) for x in leaves):
        pairs = [array_digest_np(x) for x in leaves]
        return ({n: d for n, (d, _) in zip(names, pairs)}, {n: b for n, (_, b) in zip(names, pairs)})
    out = _jitted()(leaves)
    rows = [_host(o) for o in out]
    return ({n: f"{int(r[0]):08x}{int(r[1]):08x}" for n, r in zip(names, rows)},
            {n: int(r[2]) for n, r in zip(names, rows)})


def compare(recorded: dict[str, str] | None, actual: dict[str, str], where: str,
            item: str = "params") -> None:
    """Refuse (one line naming ``where`` and the first leaf of ``item``) when a recorded digest
    differs from the actual one; nothing recorded (an older checkpoint) is not checked."""
    if not recorded:
        return
    for name in sorted(set(recorded) | set(actual)):
        if recorded.get(name) != actual.get(name):
            raise UserError(f"{where}: array {item}/{name} fails its integrity check (it does not "
                            "match the digest recorded when it was saved: damaged or altered)")


def refuse_nonfinite(counts: dict[str, int], where: str, allow: bool,
                     hint: str = "pass --allow-nonfinite to use it anyway") -> None:
    """One line naming the first leaf holding NaN or inf, unless ``allow``."""
    bad = {n: c for n, c in counts.items() if c}
    if bad and not allow:
        name = sorted(bad)[0]
        raise UserError(f"{where}: parameter {name} holds {bad[name]} non-finite values "
                        f"({len(bad)} arrays in all); {hint}")


def cast(tree: Any, dtype: Any) -> Any:
    """``tree``'s arrays cast to ``dtype``; a cast that turns finite values into inf (overflow)
    is refused in one line naming the array and its largest magnitude."""
    import jax
    import jax.numpy as jnp

    out = jax.tree.map(lambda x: x.astype(dtype), tree)
    before, after = tree_digest(tree)[1], tree_digest(out)[1]
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = path_name(path)
        if after[name] > before[name]:
            peak = float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32))))
            raise UserError(f"casting parameter {name} to {jnp.dtype(dtype).name} overflows "
                            f"(largest magnitude {peak:.4g}, beyond what {jnp.dtype(dtype).name} holds)")
    return out


def meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of a step's meta record without its own ``meta_digest`` field."""
    body = {k: v for k, v in meta.items() if k != "meta_digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def check_meta(meta: dict[str, Any], where: str) -> None:
    """The meta record matches its own digest (when it has one)."""
    if "meta_digest" in meta and meta["meta_digest"] != meta_digest(meta):
        raise UserError(f"{where} fails its integrity check: its meta record was altered")
