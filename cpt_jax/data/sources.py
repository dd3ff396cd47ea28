"""Per-domain token streams and the fixed training windows cut from them.

A domain's split is one 1-D token stream: its documents concatenated in file order, each ending
with EOS (id 0). Windows follow Pythia / GPT-NeoX (Megatron ``GPT2Dataset``): window ``i`` is
``stream[i*T : i*T + T + 1]``, i.e. T + 1 tokens with stride T, so the last target of window i is
the first input of window i + 1; attention is not reset at document boundaries. A stream of N
tokens holds ``n = (N - 1) // T`` windows; the ragged tail is not read.

Draw j of a domain (its j-th sequence over the whole run) reads window ``pi_e(j mod n)`` with
epoch ``e = j // n`` and ``pi_e`` a pseudo-random permutation of ``[0, n)`` keyed by
(seed, domain name, e): every window is read once per epoch, and a domain that runs out starts a
new, differently shuffled epoch. ``pi_e`` is a 4-round Feistel network over the next even power
of two with cycle walking, so it costs O(1) memory at any corpus size and is random access.

Long-context up-sampling (Fu et al. 2024): ``keep_documents`` keeps documents shorter than a
threshold with probability p (longer ones always), and ``FilteredStream`` concatenates the kept
documents; the domain's share of the mixture is set by the mixture weights, not by this filter.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from cpt_jax.data.indexed import IndexedDataset
from cpt_jax.errors import UserError

EOS = 0
PATTERN_NOISE = 0.1  # share of "pattern" tokens replaced by uniform noise
SYNTHETIC_DOMAINS = ("noise", "pattern", "trivial")
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def derive_key(seed: int, *parts: Any) -> int:
    """A 64-bit key from the seed and labels (stable across processes and Python versions)."""
    text = "/".join([str(int(seed))] + [str(p) for p in parts]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


# ----------------------------------------------------------------------------------------
# streams


class ArrayStream:
    """A stream held as a 1-D array (numpy array or memmap); ``doc_lengths`` when known."""

    def __init__(self, tokens: np.ndarray, doc_lengths: np.ndarray | None = None):
        tokens = np.asarray(tokens) if not isinstance(tokens, np.memmap) else tokens
        if tokens.ndim != 1:
            raise UserError(f"a token stream must be 1-D, got shape {tokens.shape}")
        self._tokens = tokens
        self._doc_lengths = doc_lengths

    @property
    def tokens(self) -> np.ndarray:
        return self._tokens

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def doc_lengths(self) -> np.ndarray:
        if self._doc_lengths is None:
            raise UserError("this token stream has no document boundaries")
        return self._doc_lengths

    def read(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``[len(starts), length]`` int32: ``tokens[s : s + length]`` for each start."""
        toks = self.tokens
        out = np.empty((len(starts), length), np.int32)
        for row, s in enumerate(starts):
            out[row] = toks[int(s) : int(s) + length]
        return out


class IndexedStream(ArrayStream):
    """The train or val split of a Megatron ``.bin/.idx`` pair, opened lazily per process.

    Pickles as its prefix, so grain worker processes re-map the file instead of copying it.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self._ds: Any = None
        self._tokens = None
        self._doc_lengths = None

    def _open(self) -> Any:
        if self._ds is None:
            self._ds = IndexedDataset(self.prefix)
        return self._ds

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = self._open().flat_tokens()
        return self._tokens

    def doc_lengths(self) -> np.ndarray:
        """Tokens per document (EOS included), grouping sequences by ``doc_idx``."""
        if self._doc_lengths is None:
            ds = self._open()
            ends = np.concatenate([[0], np.cumsum(ds.sizes, dtype=np.int64)])
            doc_idx = np.asarray(ds.doc_idx, np.int64)
            if len(doc_idx) < 2:
                doc_idx = np.array([0, len(ds.sizes)], np.int64)
            self._doc_lengths = np.diff(ends[doc_idx])
        return self._doc_lengths

    def __getstate__(self) -> dict:
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefix"])


def keep_documents(
    doc_lengths: np.ndarray, threshold: int, keep_prob: float, key: int
) -> np.ndarray:
    """Boolean mask: keep every document of >= ``threshold`` tokens, shorter ones with p."""
    lengths = np.asarray(doc_lengths)
    draw = np.random.Generator(np.random.PCG64(key)).random(len(lengths))
    return (lengths >= threshold) | (draw < keep_prob)


class FilteredStream:
    """The concatenation of a base stream's kept documents (a document-index view).

    ``recipe`` = (threshold, keep_prob, key) is re-applied lazily, so pickling stays small.
    """

    def __init__(self, base: ArrayStream, threshold: int, keep_prob: float, key: int):
        self.base, self.recipe = base, (int(threshold), float(keep_prob), int(key))
        self._idx: tuple[np.ndarray, np.ndarray] | None = None

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """(stream offset of each kept document, cumulative kept lengths); one assignment, so
        prefetch threads never see half of it."""
        if self._idx is None:
            lengths = np.asarray(self.base.doc_lengths(), np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)])[:-1]
            mask = keep_documents(lengths, *self.recipe)
            self._idx = (offsets[mask], np.concatenate([[0], np.cumsum(lengths[mask])]))
        return self._idx

    @property
    def num_tokens(self) -> int:
        return int(self._index()[1][-1])

    def kept_documents(self) -> int:
        return len(self._index()[0])

    def read(self, starts: np.ndarray, length: int) -> np.ndarray:
        doc_starts, cum = self._index()
        toks = self.base.tokens
        out = np.empty((len(starts), length), np.int32)
        for row, s in enumerate(starts):
            pos, filled = int(s), 0
            d = int(np.searchsorted(cum, pos, side="right")) - 1
            while filled < length:
                off = pos - int(cum[d])
                take = min(length - filled, int(cum[d + 1]) - pos)
                src = int(doc_starts[d]) + off
                out[row, filled : filled + take] = toks[src : src + take]
                filled, pos, d = filled + take, pos + take, d + 1
        return out

    def __getstate__(self) -> dict:
        return {"base": self.base, "recipe": self.recipe}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["base"], *state["recipe"])


class SyntheticStream(ArrayStream):
    """Seeded fake domain: ``noise`` (uniform ids, unlearnable: loss log V), ``pattern``
    (arithmetic progressions mod V - 1 with a per-document start and step in {1, 2, 3}, each
    token replaced by uniform noise with p = 0.1: learnable in context, but its loss cannot fall
    below the noise entropy ~ -0.9 ln 0.9 + 0.1 ln V), ``trivial`` (one token, the same for
    the whole domain, repeated: predictable everywhere, even at window and document starts).
    Ids lie in [1, vocab); documents (32..512 tokens) end in EOS.
    Regenerated from (name, num_tokens, vocab, key) after pickling."""

    def __init__(self, name: str, num_tokens: int, vocab: int, key: int):
        if name not in SYNTHETIC_DOMAINS:
            raise UserError(
                f"synthetic domain '{name}' is not one of {', '.join(SYNTHETIC_DOMAINS)}"
            )
        if vocab < 4:
            raise UserError(f"synthetic data needs model.vocab_size >= 4, got {vocab}")
        self.spec = (name, int(num_tokens), int(vocab), int(key))
        rng = np.random.Generator(np.random.PCG64(key))
        lengths = rng.integers(32, 513, size=num_tokens // 32 + 1)
        lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), num_tokens)) + 1]
        lengths[-1] -= int(lengths.sum()) - num_tokens
        doc = np.repeat(np.arange(len(lengths)), lengths)
        offset = np.arange(num_tokens) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        if name == "noise":
            toks = rng.integers(1, vocab, size=num_tokens)
        elif name == "pattern":
            start = rng.integers(0, vocab - 1, size=len(lengths))[doc]
            step = rng.integers(1, 4, size=len(lengths))[doc]
            toks = 1 + (start + step * offset) % (vocab - 1)
            swap = rng.random(num_tokens) < PATTERN_NOISE
            toks[swap] = rng.integers(1, vocab, size=int(swap.sum()))
        else:
            toks = np.full(num_tokens, rng.integers(1, vocab))
        toks[np.cumsum(lengths) - 1] = EOS
        dtype = np.uint16 if vocab <= 2**16 else np.int32
        super().__init__(toks.astype(dtype), lengths.astype(np.int64))

    def __getstate__(self) -> dict:
        return {"spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.__init__(*state["spec"])


# ----------------------------------------------------------------------------------------
# permutation


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64 finaliser of ``x + key`` (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        z = (x + key) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def permute(x: np.ndarray, n: int, key: int) -> np.ndarray:
    """``pi(x)`` for a keyed pseudo-random permutation pi of ``[0, n)`` (vectorised).

    Why not grain's ``MapDataset.shuffle``: it is random access too, but its order is grain's
    implementation detail (not promised across grain releases) and is seeded per dataset, while
    a batch here must stay a pure function of the step -- the same windows after a resume, on
    another host or after a grain upgrade, keyed by (seed, domain name, epoch) whatever the
    domain's position in the mixture -- so the few lines of the permutation are kept here."""
    x = np.asarray(x, np.uint64)
    if n <= 1:
        return x.astype(np.int64)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask, shift = np.uint64((1 << half) - 1), np.uint64(half)
    keys = [np.uint64(derive_key(key, "round", r)) for r in range(4)]

    def feistel(v: np.ndarray) -> np.ndarray:
        left, right = v >> shift, v & mask
        for k in keys:
            left, right = right, left ^ (_mix(right, k) & mask)
        return (left << shift) | right

    y = feistel(x)
    todo = np.flatnonzero(y >= n)
    while todo.size:  # cycle walking: the domain is at most 4n, so this ends quickly
        y[todo] = feistel(y[todo])
        todo = todo[y[todo] >= n]
    return y.astype(np.int64)


# ----------------------------------------------------------------------------------------
# windows


class WindowSource:
    """Fixed windows of T + 1 tokens, stride T, over one domain's stream (grain-compatible
    random-access source: ``len``, ``[i]``); ``read(draws)`` maps draws through epoch shuffles."""

    def __init__(self, stream: Any, seq_len: int, name: str, seed: int):
        self.stream, self.seq_len, self.name, self.seed = stream, int(seq_len), name, int(seed)
        self._n: int | None = None

    def __len__(self) -> int:
        if self._n is None:
            self._n = max(0, (self.stream.num_tokens - 1) // self.seq_len)
            if self._n == 0:
                raise UserError(
                    f"domain '{self.name}' has {self.stream.num_tokens} tokens, fewer than one "
                    f"window of seq_len + 1 = {self.seq_len + 1}"
                )
        return self._n

    def __getitem__(self, i: int) -> np.ndarray:
        return self.windows(np.array([i]))[0]

    def windows(self, idx: np.ndarray) -> np.ndarray:
        """Unshuffled windows ``idx``: ``[k, T + 1]`` int32."""
        return self.stream.read(np.asarray(idx, np.int64) * self.seq_len, self.seq_len + 1)

    def window_index(self, draws: np.ndarray) -> np.ndarray:
        """Window read by each draw j: ``pi_{j // n}(j mod n)``."""
        n, draws = len(self), np.asarray(draws, np.int64)
        out = np.empty(len(draws), np.int64)
        for epoch in np.unique(draws // n):
            sel = draws // n == epoch
            key = derive_key(self.seed, "epoch", self.name, int(epoch))
            out[sel] = permute(draws[sel] % n, n, key)
        return out

    def read(self, draws: np.ndarray) -> np.ndarray:
        return self.windows(self.window_index(draws))
