"""Per-domain held-out loss and perplexity, token-weighted over fixed batches.

For domain ``k`` with held-out batches ``b = 1..n`` the loss is the token-weighted mean of the
next-token cross-entropy ``l_t = -log p(x_{t+1} | x_{<=t})``::

    L_k = sum_b sum_t l_t / N_k,    ppl_k = exp(L_k),    N_k = number of scored tokens.

Bits per byte compares models whose tokenizers differ (e.g. before and after vocabulary
expansion): with ``B_k`` the UTF-8 bytes of the scored target tokens (a per-id table, see
``cpt_jax.data.tokenize.token_byte_lengths``), ``bpb_k = L_k N_k / (B_k ln 2)``.

Summaries follow DoReMi: the average over domains (each domain counts once) and the worst
domain; upstream domains measure forgetting and downstream ones learning (re-warming papers).
One jitted function per model config; jax retraces it once per batch shape. Parameters stay
where they are (possibly sharded device arrays); only per-batch scalar sums come back to host.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cpt_jax.checks import comma_list
from cpt_jax.data.manifest import local_data_dir
from cpt_jax.data.tokenize import load_token_bytes
from cpt_jax.errors import UserError
from cpt_jax.losses import next_token_losses
from cpt_jax.model import pythia

Batch = Mapping[str, Any]


@functools.lru_cache(maxsize=16)
def _loss_sums_fn(config: pythia.PythiaConfig, vocab_chunk: int) -> Callable:
    """``(params, tokens [B, T+1], mask [B, T]) -> (sum of masked token losses, token count)``."""

    def sums(params: pythia.Params, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        losses = next_token_losses(params, tokens, config, vocab_chunk=vocab_chunk)
        m = mask.astype(jnp.float32)
        return jnp.sum(losses * m), jnp.sum(m)

    return jax.jit(sums)


def evaluate(
    params: pythia.Params,
    model_config: pythia.PythiaConfig,
    eval_sets: Mapping[str, Sequence[Batch]],
    vocab_chunk: int = 0,
    put: Callable[[np.ndarray], jax.Array] | None = None,
    token_bytes: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """``{domain: {"loss": L_k, "ppl": exp(L_k), "tokens": N_k}}`` over each domain's batches,
    plus ``"bytes": B_k`` and ``"bpb"`` when ``token_bytes`` (UTF-8 bytes per token id) is given.

    A batch is ``{"tokens": int32 [B, T+1], ...}`` with an optional ``"mask"`` ``[B, T]`` that
    selects scored target positions (default: all). ``put`` places a host array on devices
    (e.g. with the training batch sharding); by default jit places it.
    """
    fn = _loss_sums_fn(model_config, int(vocab_chunk))
    params = jax.tree.map(lambda a: a if isinstance(a, jax.Array) else jnp.asarray(a), params)
    place = put if put is not None else (lambda a: a)
    pending: dict[str, list[tuple[jax.Array, jax.Array]]] = {}
    nbytes: dict[str, int] = {}
    for domain, batches in eval_sets.items():
        if not batches:
            raise UserError(f"eval set for domain '{domain}' has no batches")
        pending[domain] = []
        for batch in batches:
            tokens = np.asarray(batch["tokens"])
            if tokens.ndim != 2 or tokens.shape[1] < 2:
                raise UserError(
                    f"eval batch for domain '{domain}' has tokens of shape {tokens.shape}, "
                    "expected [B, T+1] with T >= 1"
                )
            mask = batch.get("mask")
            mask = np.ones((tokens.shape[0], tokens.shape[1] - 1), np.float32) if mask is None else np.asarray(mask)
            pending[domain].append(fn(params, place(tokens.astype(np.int32)), place(mask)))
            if token_bytes is not None:
                nbytes[domain] = nbytes.get(domain, 0) + target_bytes(tokens, mask, token_bytes)
    host = jax.device_get(pending)  # one transfer after all batches are dispatched
    results: dict[str, dict[str, float]] = {}
    for domain, sums in host.items():
        total = float(np.sum([np.float64(s) for s, _ in sums]))
        count = float(np.sum([np.float64(n) for _, n in sums]))
        if count <= 0:
            raise UserError(f"eval set for domain '{domain}' scores no tokens")
        loss = total / count
        results[domain] = {"loss": loss, "ppl": _exp(loss), "tokens": int(round(count))}
        if domain in nbytes:
            results[domain].update(bytes=nbytes[domain], bpb=bits_per_byte(total, nbytes[domain]))
    return results


def target_bytes(tokens: np.ndarray, mask: np.ndarray, token_bytes: np.ndarray) -> int:
    """UTF-8 bytes of the scored targets ``tokens[:, 1:]`` (where ``mask`` is set)."""
    targets = np.asarray(tokens)[:, 1:]
    if targets.size and int(targets.max()) >= len(token_bytes):
        raise UserError(f"token id {int(targets.max())} is outside the byte table of "
                        f"{len(token_bytes)} ids (a different tokenizer?)")
    return int(np.sum(np.asarray(token_bytes, np.int64)[targets] * (np.asarray(mask) > 0)))


def bits_per_byte(nats: float, nbytes: int) -> float:
    """``sum of token losses (nats) / (bytes ln 2)`` = ``L N / (B ln 2)``; NaN without bytes."""
    return nats / (nbytes * math.log(2)) if nbytes > 0 else float("nan")


def token_bytes_for(data: Any) -> np.ndarray | None:
    """The byte table of the ``data`` section's tokenized dir (``DATA_DIR/token_bytes.npy``,
    written by ``cpt-jax tokenize``); None for synthetic data or a data dir without one."""
    if data.source != "tokenized" or not data.dir:
        return None

    return load_token_bytes(local_data_dir(data.dir))


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


def _names(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return comma_list(value)
    return list(value)


def _group(results: Mapping[str, Mapping[str, float]], names: Sequence[str], what: str) -> dict[str, float]:
    missing = [n for n in names if n not in results]
    if missing:
        raise UserError(f"{what} domain '{missing[0]}' has no eval result (have: {', '.join(results)})")
    losses = [float(results[n]["loss"]) for n in names]
    out = {"loss": float(np.mean(losses)), "ppl": float(np.mean([_exp(x) for x in losses]))}
    if all("bpb" in results[n] for n in names):
        out["bpb"] = float(np.mean([float(results[n]["bpb"]) for n in names]))
    return out


def summarize(
    results: Mapping[str, Mapping[str, float]],
    upstream: str | Iterable[str] | None = None,
    downstream: str | Iterable[str] | None = None,
) -> dict[str, Any]:
    """Average and worst domain (DoReMi), plus the upstream / downstream group averages.

    ``avg``: mean over domains of ``L_k`` (``ppl`` = mean of ``exp(L_k)``, ``bpb`` = mean of
    ``bpb_k`` when every domain has it); ``worst``: the domain with the largest ``L_k``;
    ``upstream`` / ``downstream`` (comma string or list of domains): the same average restricted
    to that group, present only when the group is named.
    """
    if not results:
        raise UserError("no eval results to summarize")
    worst = max(results, key=lambda d: float(results[d]["loss"]))
    out: dict[str, Any] = {
        "avg": _group(results, list(results), "eval"),
        "worst": {"domain": worst, "loss": float(results[worst]["loss"]),
                  "ppl": _exp(float(results[worst]["loss"]))},
    }
    if "bpb" in results[worst]:
        out["worst"]["bpb"] = float(results[worst]["bpb"])
    for what, value in (("upstream", upstream), ("downstream", downstream)):
        names = _names(value)
        if names:
            out[what] = _group(results, names, what)
    return out


def to_metrics(
    results: Mapping[str, Mapping[str, float]], summary: Mapping[str, Any] | None = None,
    prefix: str = "eval",
) -> dict[str, float]:
    """Flat metrics.jsonl keys: ``eval/<domain>/loss``, ``eval/<domain>/ppl``, ``eval/avg/loss``,
    ``eval/worst/loss`` and, when summarized, ``eval/upstream/loss``, ``eval/downstream/loss``;
    with bytes, ``eval/<domain>/bpb`` and ``eval/<group>/bpb`` beside each loss."""
    summary = summarize(results) if summary is None else summary
    out: dict[str, float] = {}
    for domain, r in results.items():
        out[f"{prefix}/{domain}/loss"] = float(r["loss"])
        out[f"{prefix}/{domain}/ppl"] = float(r["ppl"])
        if "bpb" in r:
            out[f"{prefix}/{domain}/bpb"] = float(r["bpb"])
    for group in ("avg", "worst", "upstream", "downstream"):
        if group in summary:
            out[f"{prefix}/{group}/loss"] = float(summary[group]["loss"])
            if "bpb" in summary[group]:
                out[f"{prefix}/{group}/bpb"] = float(summary[group]["bpb"])
    return out
