"""Zero-shot multiple choice scored by log-likelihood, as lm-eval-harness does it.

For an example with context ``c`` and choices ``a_1..a_m`` the model scores
``ll_i = sum_j log p(a_i[j] | c, a_i[<j])`` over the continuation's tokens. ``acc`` picks
``argmax_i ll_i``; ``acc_norm`` picks ``argmax_i ll_i / chars(a_i)``, the character length of
the choice text without the target delimiter (the leading space), as lm-eval-harness does;
``acc_per_byte`` divides by the UTF-8 bytes of the continuation, space included (OLMES's
per-byte variant). Each accuracy comes with the harness's standard error
``sqrt(p (1 - p) / (n - 1))``.

Tokenisation follows lm-eval-harness 0.4 (``_encode_pair``): trailing spaces of the context move
to the front of the continuation, the context and ``context + continuation`` are encoded, and
the continuation's ids are the tail of the latter; an empty context becomes ``[EOS]``. Inputs
longer than the model's window keep their last ``max_len + 1`` tokens.

Requests are sorted into shape buckets ``(L, C)`` (``L`` input length, ``C`` continuation
positions; powers of two, ``C`` in steps of 64 past 64), right-padded and scored ``batch_size`` rows at a time by
one jitted function per bucket; only the ``C`` scored positions are unembedded.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cpt_jax import checks
from cpt_jax.errors import UserError
from cpt_jax.eval.tasks import Task
from cpt_jax.losses import cross_entropy
from cpt_jax.model import pythia

EOS_ID = 0
PAD_ID = 1
MIN_LEN = 32  # smallest input-length bucket
MIN_CONT = 8  # smallest continuation bucket
CONT_CHUNK = 64  # continuation positions unembedded at once (bounds the [B, C, V] logits)

Pair = tuple[list[int], list[int]]


def check_section(eval_cfg: Any) -> None:
    """The ``eval`` section's zero-shot scoring: batch size > 0, limit >= 0 (the harness keys
    are ``eval/harness.py``'s)."""
    checks.positive("eval.batch_size", eval_cfg.batch_size)
    checks.at_least_zero("eval.limit", eval_cfg.limit, "0 = all")


def encode_pairs(tokenizer: Any, contexts: Sequence[str], continuations: Sequence[str],
                 eos_id: int = EOS_ID) -> list[Pair]:
    """``(context ids, continuation ids)`` per request, by lm-eval-harness's ``_encode_pair``."""
    ctxs, wholes = [], []
    for context, cont in zip(contexts, continuations, strict=True):
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, cont = context[:-n_spaces], context[-n_spaces:] + cont
        ctxs.append(context)
        wholes.append(context + cont)
    enc = lambda texts: [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    ctx_ids, whole_ids = enc(ctxs), enc(wholes)
    pairs = []
    for context, c_ids, w_ids, cont in zip(ctxs, ctx_ids, whole_ids, continuations):
        if context == "":
            pairs.append(([eos_id], list(w_ids)))
        else:
            pairs.append((list(c_ids), list(w_ids[len(c_ids):])))
    return pairs


def on_device(params: pythia.Params) -> pythia.Params:
    """Host (numpy) leaves moved to the default device once; jax arrays (maybe sharded) kept."""
    return jax.tree.map(lambda a: a if isinstance(a, jax.Array) else jnp.asarray(a), params)


def _bucket(n: int, base: int, lo: int, hi: int) -> int:
    size = lo
    while size < n:
        size *= base
    return min(size, hi)


@functools.lru_cache(maxsize=8)
def _ll_fn(config: pythia.PythiaConfig) -> Callable:
    """Jitted ``(params, inputs [B, L], pos [B, C], targets [B, C], mask [B, C]) -> (ll [B],
    greedy [B])``: greedy when every scored target is the argmax of its logits."""

    def loglik(params, inputs, pos, targets, mask):
        def scored(x):
            logits = pythia.unembed(params, x[0])
            return cross_entropy(logits, x[1]), jnp.argmax(logits, axis=-1) == x[1]

        h = pythia.hidden_states(params, inputs, config)  # [B, L, d]
        hc = jnp.take_along_axis(h, pos[..., None], axis=1)  # [B, C, d]: the scored positions
        b, c, d = hc.shape
        k = min(c, CONT_CHUNK)
        blocks = (hc.reshape(b, c // k, k, d).swapaxes(0, 1), targets.reshape(b, c // k, k).swapaxes(0, 1))
        nll, hit = jax.lax.map(scored, blocks)
        nll, hit = nll.swapaxes(0, 1).reshape(b, c), hit.swapaxes(0, 1).reshape(b, c)
        return -jnp.sum(nll * mask, axis=-1), jnp.all(hit | (mask == 0), axis=-1)

    return jax.jit(loglik)


def loglikelihoods(params: pythia.Params, config: pythia.PythiaConfig, pairs: Sequence[Pair], batch_size: int = 32,
                   max_len: int = 0, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``ll[i] = sum log p(continuation_i | context_i)`` (float64 ``[N]``) for id pairs; the
    first half of :func:`score_pairs`. ``max_len`` (default ``config.max_position_embeddings``)
    is the longest input window."""
    return score_pairs(params, config, pairs, batch_size, max_len, progress)[0]


def score_pairs(
    params: pythia.Params,
    config: pythia.PythiaConfig,
    pairs: Sequence[Pair],
    batch_size: int = 32,
    max_len: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ll, greedy)``: the log-likelihoods of :func:`loglikelihoods` and, per pair, whether
    greedy decoding would produce the continuation (every token the argmax), as lm-eval's
    ``loglikelihood`` returns them."""
    if batch_size <= 0:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    max_len = max_len or config.max_position_embeddings
    fn = _ll_fn(config)
    params = on_device(params)
    rows = []  # (L bucket, C bucket, index, input ids, number of scored tokens)
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx:
            raise UserError(f"request {i} has an empty context encoding (use [EOS] for none)")
        seq = (list(ctx) + list(cont))[-(max_len + 1):]
        k = min(len(cont), len(seq) - 1)
        n = len(seq) - 1
        bad = [t for t in seq if not 0 <= t < config.vocab_size]
        if bad:
            raise UserError(f"request {i}: token id {bad[0]} is outside the model's vocabulary of {config.vocab_size} "
                            "(the tokenizer does not match the model)")
        L = _bucket(n, 2, MIN_LEN, max_len)
        C = _bucket(max(k, 1), 2, MIN_CONT, 1 << 30)
        C = C if C <= CONT_CHUNK else -(-k // CONT_CHUNK) * CONT_CHUNK
        rows.append((L, C, i, seq, k))
    rows.sort(key=lambda r: (r[0], r[1]))
    out, greedy = np.zeros(len(pairs), np.float64), np.zeros(len(pairs), bool)
    pending, done = [], 0
    for (L, C), group in itertools.groupby(rows, key=lambda r: (r[0], r[1])):
        group = list(group)
        for start in range(0, len(group), batch_size):  # a batch never mixes buckets
            chunk = group[start:start + batch_size]
            pending.append(_run_batch(fn, params, chunk, L, C, batch_size))
            done += len(chunk)
            if progress is not None:
                progress(done, len(rows))
    for idx, (ll, hit) in jax.device_get(pending):
        out[idx] = np.asarray(ll, np.float64)[: len(idx)]
        greedy[idx] = np.asarray(hit)[: len(idx)]
    return out, greedy


def _run_batch(fn: Callable, params: pythia.Params, chunk: list, L: int, C: int, batch_size: int):
    inputs = np.full((batch_size, L), PAD_ID, np.int32)
    pos = np.zeros((batch_size, C), np.int32)
    targets = np.zeros((batch_size, C), np.int32)
    mask = np.zeros((batch_size, C), np.float32)
    for r, (_, _, _, seq, k) in enumerate(chunk):
        n = len(seq) - 1
        inputs[r, :n] = seq[:-1]
        pos[r, :k] = np.arange(n - k, n)
        targets[r, :k] = seq[n - k + 1:]
        mask[r, :k] = 1.0
    idx = np.array([c[2] for c in chunk])
    return idx, fn(params, inputs, pos, targets, mask)


TARGET_DELIMITER = " "  # lm-eval-harness's default: continuation = delimiter + choice text
NORMS = ("acc", "acc_norm", "acc_per_byte")


def choice_text(continuation: str) -> str:
    """The choice without the target delimiter the harness prepends (one leading space)."""
    return continuation[len(TARGET_DELIMITER):] if continuation.startswith(TARGET_DELIMITER) \
        else continuation


def lengths(continuations: Sequence[str]) -> dict[str, np.ndarray]:
    """Divisors of the log-likelihood per metric: 1 (``acc``), the character length of the
    choice text (``acc_norm``, lm-eval-harness) and the UTF-8 bytes of the scored continuation,
    delimiter included (``acc_per_byte``, OLMES); at least 1."""
    return {
        "acc": np.ones(len(continuations)),
        "acc_norm": np.array([max(len(choice_text(c)), 1) for c in continuations], np.float64),
        "acc_per_byte": np.array([max(len(c.encode("utf-8")), 1) for c in continuations],
                                 np.float64),
    }


def stderr(hits: np.ndarray) -> float:
    """lm-eval-harness's standard error of a mean of 0/1 hits: sample std (n - 1) / sqrt(n),
    i.e. ``sqrt(p (1 - p) / (n - 1))``; NaN for fewer than 2 examples."""
    n = len(hits)
    return float(np.std(hits, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def score(task: Task, lls: Sequence[float]) -> dict[str, Any]:
    """``{metric, metric_stderr for metric in NORMS} + {"n"}`` from per-request
    log-likelihoods in task request order: metric picks ``argmax_i ll_i / length_i``."""
    lls = np.asarray(lls, np.float64)
    hits: dict[str, list[int]] = {m: [] for m in NORMS}
    i = 0
    for ex in task.examples:
        m = len(ex.continuations)
        ll = lls[i:i + m]
        for metric, length in lengths(ex.continuations).items():
            hits[metric].append(int(np.argmax(ll / length) == ex.gold))
        i += m
    if i != len(lls):
        raise UserError(f"task '{task.name}': {len(lls)} log-likelihoods for {i} requests")
    out: dict[str, Any] = {}
    for metric, h in hits.items():
        out[metric] = float(np.mean(h))
        out[f"{metric}_stderr"] = stderr(np.asarray(h, np.float64))
    out["n"] = len(task.examples)
    return out


def task_requests(task: Task) -> tuple[list[str], list[str]]:
    """All ``(contexts, continuations)`` of a task, example by example, choice by choice."""
    contexts = [c for ex in task.examples for c in ex.contexts]
    continuations = [c for ex in task.examples for c in ex.continuations]
    return contexts, continuations


def evaluate_tasks(
    params: pythia.Params,
    config: pythia.PythiaConfig,
    tasks: Sequence[Task],
    tokenizer: Any,
    batch_size: int = 32,
    max_len: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score several tasks in one pass (their requests share shape buckets and compiles).

    Returns ``{task: {"acc", "acc_norm", "acc_per_byte", their "_stderr"s, "n", "chance",
    "prompts"}}`` where ``chance`` is the expected accuracy of uniform guessing,
    ``mean(1 / number of choices)``, and ``prompts`` where the requests came from.
    """
    pairs: list[Pair] = []
    spans = []
    for task in tasks:
        contexts, continuations = task_requests(task)
        spans.append((len(pairs), len(pairs) + len(contexts)))
        pairs.extend(encode_pairs(tokenizer, contexts, continuations))
    lls = loglikelihoods(params, config, pairs, batch_size, max_len, progress)
    results = {}
    for task, (a, b) in zip(tasks, spans):
        res = score(task, lls[a:b])
        res["chance"] = float(np.mean([1.0 / len(ex.continuations) for ex in task.examples]))
        res["prompts"] = task.prompts
        results[task.name] = res
    return results
