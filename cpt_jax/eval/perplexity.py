"""Per-domain held-out loss and perplexity, token-weighted over fixed batches.

For domain ``k`` with held-out batches ``b = 1..n`` the loss is the token-weighted mean of the
next-token cross-entropy ``l_t = -log p(x_{t+1} | x_{<=t})``::

    L_k = sum_b sum_t l_t / N_k,    ppl_k = exp(L_k),    N_k = number of scored tokens.

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

from cpt_jax.config import comma_list
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
) -> dict[str, dict[str, float]]:
    """``{domain: {"loss": L_k, "ppl": exp(L_k), "tokens": N_k}}`` over each domain's batches.

    A batch is ``{"tokens": int32 [B, T+1], ...}`` with an optional ``"mask"`` ``[B, T]`` that
    selects scored target positions (default: all). ``put`` places a host array on devices
    (e.g. with the training batch sharding); by default jit places it.
    """
    fn = _loss_sums_fn(model_config, int(vocab_chunk))
    params = jax.tree.map(lambda a: a if isinstance(a, jax.Array) else jnp.asarray(a), params)
    place = put if put is not None else (lambda a: a)
    pending: dict[str, list[tuple[jax.Array, jax.Array]]] = {}
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
    host = jax.device_get(pending)  # one transfer after all batches are dispatched
    results: dict[str, dict[str, float]] = {}
    for domain, sums in host.items():
        total = float(np.sum([np.float64(s) for s, _ in sums]))
        count = float(np.sum([np.float64(n) for _, n in sums]))
        if count <= 0:
            raise UserError(f"eval set for domain '{domain}' scores no tokens")
        loss = total / count
        results[domain] = {"loss": loss, "ppl": _exp(loss), "tokens": int(round(count))}
    return results


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
    return {"loss": float(np.mean(losses)), "ppl": float(np.mean([_exp(x) for x in losses]))}


def summarize(
    results: Mapping[str, Mapping[str, float]],
    upstream: str | Iterable[str] | None = None,
    downstream: str | Iterable[str] | None = None,
) -> dict[str, Any]:
    """Average and worst domain (DoReMi), plus the upstream / downstream group averages.

    ``avg``: mean over domains of ``L_k`` (``ppl`` = mean of ``exp(L_k)``); ``worst``: the domain
    with the largest ``L_k``; ``upstream`` / ``downstream`` (comma string or list of domains):
    the same average restricted to that group, present only when the group is named.
    """
    if not results:
        raise UserError("no eval results to summarize")
    worst = max(results, key=lambda d: float(results[d]["loss"]))
    out: dict[str, Any] = {
        "avg": _group(results, list(results), "eval"),
        "worst": {"domain": worst, "loss": float(results[worst]["loss"]),
                  "ppl": _exp(float(results[worst]["loss"]))},
    }
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
    ``eval/worst/loss`` and, when summarized, ``eval/upstream/loss``, ``eval/downstream/loss``."""
    summary = summarize(results) if summary is None else summary
    out: dict[str, float] = {}
    for domain, r in results.items():
        out[f"{prefix}/{domain}/loss"] = float(r["loss"])
        out[f"{prefix}/{domain}/ppl"] = float(r["ppl"])
    for group in ("avg", "worst", "upstream", "downstream"):
        if group in summary:
            out[f"{prefix}/{group}/loss"] = float(summary[group]["loss"])
    return out
