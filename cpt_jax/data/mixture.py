"""Domain mixture: weights, phases, a replay quota, and the per-step allocation of batch slots.

Weights (``data.weights``, each phase, ``data.replay_weights``): ``proportional`` (to train
tokens), ``uniform``, ``"a=0.5,b=0.3"``, a JSON file (DoReMi's ``{"average": {...}, "final":
{...}}``, whose ``average`` alpha-bar is used, or a flat ``{domain: w}``), or a mapping.
Phases (``data.phases = "0:a=1.0;500:a=0.7,b=0.3"``) replace the main weights from each step on.

Replay (Ibrahim et al. 2024), compute-equivalent and exact over steps: with q = f B (f =
``replay_fraction`` as written, an exact rational), global batch t holds
``R_t = floor(q (t + 1) + 1/2) - floor(q t + 1/2)`` sequences from the replay domains (by their
own weights) and B - R_t from the main mixture. R_t is floor(q) or ceil(q), a pure function of t,
and the replayed total before step t, floor(q t + 1/2), never differs from f B t by more than 1/2.

Allocation (stratified, deterministic): the g-th slot of a sub-mixture (counted from its phase's
start) goes to the domain whose cumulative-weight interval holds ``(vdc(g) + U) mod 1``, with vdc
the base-2 van der Corput sequence (bit reversal of g) and U a rotation keyed by (seed, phase).
Any run of m consecutive slots gives domain i ``m * w_i + O(log m)`` slots (within one slot of
``B * w_i`` when B is a power of two), so every batch is close to the weights, not just their
mean; and the count of domain i among the first G slots has a closed form (O(log G)), so the
draws made before step k are known without replaying steps 0..k-1: batch k is a pure function of
(config, seed, k).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from fractions import Fraction

import numpy as np

from cpt_jax import storage
from cpt_jax.data.sources import derive_key
from cpt_jax.errors import UserError

K = 48  # bits of the fixed-point circle: 2**48 slots per phase
_M = 1 << K


# ----------------------------------------------------------------------------------------
# weights and phases


def _parse_pairs(text: str, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"{what}: '{item.strip()}' is not DOMAIN=WEIGHT")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"{what}: weight '{value.strip()}' of '{name.strip()}' is not a number") from None
    return out


def _read_json(path: str, what: str) -> dict[str, float]:
    try:
        data = json.loads(storage.path(path).read_text(encoding="utf-8"))  # local or gs://
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what}: cannot read weights file {path} ({type(err).__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("average"), dict):
        data = data["average"]  # DoReMi: the averaged weights alpha-bar
    if not isinstance(data, dict):
        raise UserError(f"{what}: {path} holds no {{domain: weight}} object")
    out = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{what}: {path}: weight of '{name}' is not a number")
        out[str(name)] = float(value)
    return out


def parse_weights(
    spec: str | Mapping[str, float],
    names: list[str],
    members: list[str],
    tokens: Mapping[str, int] | None = None,
    what: str = "data.weights",
) -> np.ndarray:
    """Normalised weights over ``names`` (the domain-id order) from a spec.

    ``proportional`` / ``uniform`` cover ``members``; explicit weights may name any of ``names``.
    """
    if isinstance(spec, str) and spec.strip() in ("proportional", "uniform"):
        if not members:
            raise UserError(f"{what}: no domains to weight")
        if spec.strip() == "uniform" or tokens is None:
            raw = {d: 1.0 for d in members}
        else:
            raw = {d: float(tokens[d]) for d in members}
    elif isinstance(spec, Mapping):
        raw = {str(k): float(v) for k, v in spec.items()}
    elif spec.strip().endswith(".json") or os.path.isfile(spec.strip()):
        raw = _read_json(spec.strip(), what)
    else:
        raw = _parse_pairs(spec, what)
    unknown = [d for d in raw if d not in names]
    if unknown:
        raise UserError(f"{what}: unknown domain '{unknown[0]}' (known: {', '.join(names)})")
    bad = [d for d, w in raw.items() if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise UserError(f"{what}: weight of '{bad[0]}' must be a finite number >= 0, got {raw[bad[0]]}")
    w = np.array([raw.get(d, 0.0) for d in names], np.float64)
    if not w.sum() > 0:
        raise UserError(f"{what}: weights sum to 0")
    return w / w.sum()


def parse_phases(text: str, what: str = "data.phases") -> list[tuple[int, str]]:
    """``"STEP:SPEC;STEP:SPEC"`` -> [(step, spec)], steps strictly increasing and >= 0."""
    out: list[tuple[int, str]] = []
    for item in text.split(";"):
        if not item.strip():
            continue
        step, sep, spec = item.partition(":")
        try:
            start = int(step)
        except ValueError:
            start = -1
        if not sep or start < 0 or not spec.strip():
            raise UserError(f"{what}: '{item.strip()}' is not STEP:WEIGHTS with STEP >= 0")
        if out and start <= out[-1][0]:
            raise UserError(f"{what}: phase steps must increase, got {out[-1][0]} then {start}")
        out.append((start, spec.strip()))
    return out


def replay_quota(replay_fraction: float, batch: int) -> Fraction:
    """q = f * B, the mean replayed sequences per batch, exact (f read as its shortest decimal).

    Refused when some batch would replay all B sequences (q > B - 1) or f is outside [0, 1)."""
    if not (math.isfinite(replay_fraction) and 0 <= replay_fraction < 1):
        raise UserError(f"data.replay_fraction must be in [0, 1), got {replay_fraction}")
    q = Fraction(repr(float(replay_fraction))) * int(batch)
    if q > batch - 1:
        raise UserError(
            f"data.replay_fraction {replay_fraction} x batch {batch} = {float(q):g} replayed sequences "
            f"per batch: some batches would replay all {batch}; it must be at most {batch - 1}"
        )
    return q


def replayed_before(quota: Fraction | int, step: int) -> int:
    """Replayed sequences in batches 0 .. step - 1: floor(q * step + 1/2), in exact integers."""
    q = Fraction(quota)
    return (2 * q.numerator * int(step) + q.denominator) // (2 * q.denominator)


# ----------------------------------------------------------------------------------------
# stratified allocation


def bitrev(g: np.ndarray) -> np.ndarray:
    """Reverse the low K bits of each g (uint64)."""
    x = np.asarray(g, np.uint64)
    for shift, mask in (
        (1, 0x5555555555555555), (2, 0x3333333333333333), (4, 0x0F0F0F0F0F0F0F0F),
        (8, 0x00FF00FF00FF00FF), (16, 0x0000FFFF0000FFFF), (32, 0x00000000FFFFFFFF),
    ):
        s, m = np.uint64(shift), np.uint64(mask)
        x = ((x >> s) & m) | ((x & m) << s)
    return x >> np.uint64(64 - K)


def _count_below(g_total: int, bounds: np.ndarray) -> np.ndarray:
    """#{g < g_total : bitrev(g) < a} for each a in ``bounds`` (ints in [0, 2**K])."""
    total = np.zeros(len(bounds), np.int64)
    c = 0
    for k in range(K - 1, -1, -1):
        if g_total >> k & 1:
            delta = int(bitrev(np.array([c]))[0])  # the block {c + r : r < 2**k} is
            s = 1 << (K - k)  # {j * s + delta : j < 2**k}
            total += np.clip(-((delta - bounds) // s), 0, 1 << k)
            c += 1 << k
    return total


class Stratified:
    """Slots -> domains by the rotated van der Corput sequence over cumulative weights."""

    def __init__(self, weights: np.ndarray, rotation: int):
        cum = np.cumsum(np.asarray(weights, np.float64))
        edges = [0] + [min(_M, int(round(c * _M))) for c in cum[:-1]] + [_M]
        self.edges = np.maximum.accumulate(np.array(edges, np.int64))
        self.rotation = int(rotation) % _M

    def domains(self, g0: int, n: int) -> np.ndarray:
        """Domain index of slots g0 .. g0 + n - 1."""
        v = (bitrev(np.arange(g0, g0 + n, dtype=np.uint64)) + np.uint64(self.rotation)) % np.uint64(_M)
        return np.searchsorted(self.edges[1:-1], v.astype(np.int64), side="right")

    def counts(self, g_total: int) -> np.ndarray:
        """Slots of each domain among the first ``g_total``: closed form, O(K) numpy ops."""
        if g_total == 0:
            return np.zeros(len(self.edges) - 1, np.int64)
        u, t = self.rotation, self.edges
        # (x + u) mod M < t  <=>  x in [0, t - u) or x in [M - u, M - u + t)
        below = _count_below(g_total, np.concatenate([
            np.maximum(t - u, 0), np.minimum(_M - u + t, _M), np.full(1, _M - u),
        ]))
        n = len(t)
        h = below[:n] + below[n : 2 * n] - below[2 * n]
        return np.diff(h)


# ----------------------------------------------------------------------------------------
# the plan: which domain and which draw fills each slot of step k


class MixturePlan:
    """Phased main mixture plus replay over domains ``names`` (ids = list index).

    ``replay`` = q = f B, the mean replayed sequences per batch (batch t holds R_t of them, see
    ``replayed_before``). ``layout(k)`` -> (domain[B], draw[B]): the domain of each slot of
    global batch k and the index j of that draw within the domain (j counts all earlier draws
    of that domain).
    """

    def __init__(
        self,
        names: list[str],
        phases: list[tuple[int, np.ndarray]],
        batch: int,
        seed: int,
        replay_weights: np.ndarray | None = None,
        replay: Fraction | int = 0,
    ):
        if not phases or phases[0][0] != 0:
            raise UserError("the first mixture phase must start at step 0")
        self.names, self.batch, self.quota = list(names), int(batch), Fraction(replay)
        if not 0 <= self.quota <= self.batch - 1:
            raise UserError(f"replayed sequences per batch must be in [0, {self.batch - 1}], got {replay}")
        self.replay = float(self.quota)  # mean replayed sequences per batch
        self.starts = [int(s) for s, _ in phases]
        self.weights = [np.asarray(w, np.float64) for _, w in phases]
        self.allocs = [
            Stratified(w, derive_key(seed, "mixture", i, s)) for i, (s, w) in enumerate(phases)
        ]
        self.replay_weights = replay_weights
        self.replay_alloc = (
            Stratified(replay_weights, derive_key(seed, "replay")) if self.quota else None
        )
        # draws of each domain made by the main mixture before each phase starts
        self.before = [np.zeros(len(names), np.int64)]
        for p in range(len(phases) - 1):
            span = self.main_before(self.starts[p + 1]) - self.main_before(self.starts[p])
            self.before.append(self.before[-1] + self.allocs[p].counts(span))

    def replayed_before(self, step: int) -> int:
        """Replayed sequences in batches 0 .. step - 1."""
        return replayed_before(self.quota, step) if self.quota else 0

    def main_before(self, step: int) -> int:
        """Main-mixture sequences in batches 0 .. step - 1."""
        return self.batch * int(step) - self.replayed_before(step)

    def replay_count(self, step: int) -> int:
        """R_t: replayed sequences in batch ``step``."""
        return self.replayed_before(step + 1) - self.replayed_before(step)

    def phase(self, step: int) -> int:
        return int(np.searchsorted(self.starts, step, side="right")) - 1

    def weights_at(self, step: int) -> np.ndarray:
        """Expected per-sequence domain shares of step ``step`` (main and replay combined; the
        replay share is f = q / B, which the replayed counts track within half a sequence)."""
        f = float(self.quota / self.batch)
        w = self.weights[self.phase(step)] * (1 - f)
        if self.quota:
            w = w + self.replay_weights * f
        return w

    def draws_before(self, step: int) -> np.ndarray:
        """Sequences of each domain in global batches 0 .. step - 1 (closed form)."""
        if step < 0:
            raise UserError(f"data step must be >= 0, got {step}")
        p = self.phase(step)
        done = self.before[p] + self.allocs[p].counts(self.main_before(step) - self.main_before(self.starts[p]))
        if self.quota:
            done = done + self.replay_alloc.counts(self.replayed_before(step))
        return done

    def layout(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        done = self.draws_before(step)
        p = self.phase(step)
        r = self.replay_count(step)
        main = self.batch - r
        g0 = self.main_before(step) - self.main_before(self.starts[p])
        main_dom = self.allocs[p].domains(g0, main)
        if r:
            rep_dom = self.replay_alloc.domains(self.replayed_before(step), r)
        else:
            rep_dom = np.zeros(0, np.int64)
        dom = np.concatenate([main_dom, rep_dom])
        draw = done[dom] + _ranks(dom)  # main slots first, then replay, per domain
        # where replayed sequences sit in the batch: evenly spread
        replay_rows = np.floor((np.arange(r) + 0.5) * self.batch / max(r, 1)).astype(np.int64)
        main_rows = np.setdiff1d(np.arange(self.batch), replay_rows)
        out_dom, out_draw = np.empty(self.batch, np.int64), np.empty(self.batch, np.int64)
        out_dom[main_rows], out_draw[main_rows] = dom[:main], draw[:main]
        out_dom[replay_rows], out_draw[replay_rows] = dom[main:], draw[main:]
        return out_dom, out_draw


def _ranks(ids: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same id."""
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    first = np.concatenate([[0], np.flatnonzero(np.diff(ordered)) + 1])
    runs = np.diff(np.concatenate([first, [len(ids)]]))
    ranks = np.empty(len(ids), np.int64)
    ranks[order] = np.arange(len(ids)) - np.repeat(first, runs)
    return ranks
