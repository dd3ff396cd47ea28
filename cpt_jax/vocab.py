"""Vocabulary expansion with subword-mean initialisation.

1. New tokens: a byte-level BPE is trained on the domain corpus with the ``tokenizers`` library
   (same normaliser and pre-tokeniser as the base); its merge results that the base vocabulary
   lacks are candidates, in merge order.
2. The base tokenizer is extended as a BPE, not with "added tokens": a candidate ``t`` is kept
   when the current extended BPE splits ``t`` into exactly two pieces ``(x, y)``; the merge
   ``x y -> t`` is appended after all base merges (lowest priority) and ``t`` gets the next id
   after the base's last one (``V_base = 50277`` for Pythia). Base ids and merges never change,
   and a word that no new merge touches is tokenised exactly as before.
3. Embeddings: for each new token ``t`` with old-tokenizer pieces ``p_1..p_k`` (the base BPE of
   ``t``), row ``V_base + i`` of BOTH ``embed_in`` and ``embed_out`` is ``mean_j W[p_j]``
   (fallback: the mean of the trained rows ``W[:V_base]``). Pythia's padding rows
   ``V_base..V-1`` are used first; ``V`` grows (to a multiple of 128) only when they run out,
   and grown rows beyond the new tokens hold the trained mean.
4. A first training phase may update only the new rows: :func:`embedding_only_mask` is the
   engine's trainable mask, :func:`mask_embedding_rows` the same as a gradient transform.

:func:`extend_checkpoint` does 1-3 for a checkpoint and writes the result (``cpt-jax vocab extend``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from cpt_jax import ownership
from cpt_jax.data import readers
from cpt_jax.data.tokenizer import load_tokenizer, pythia_tokenizer
from cpt_jax.errors import UserError

Params = dict[str, Any]
RECORD = "vocab.json"  # what extend_checkpoint writes beside tokenizer.json and the params
OWNER = "vocab extend"  # the verb named in the output folder's ownership mark
EMBEDDINGS = ("embed_in", "embed_out")
VOCAB_MULTIPLE = 128


@dataclass
class Extension:
    """An extended tokenizer: ``spec`` (tokenizer.json dict), new tokens (byte-level strings,
    token i has id ``base_size + i``), and the old tokenizer's piece ids of each new token."""

    spec: dict
    base_size: int
    new_tokens: list[str]
    pieces: list[list[int]]

    @property
    def new_ids(self) -> np.ndarray:
        return np.arange(self.base_size, self.base_size + len(self.new_tokens))


def _pair(merge: Any) -> tuple[str, str]:
    """A merge as stored in tokenizer.json: ``"a b"`` (older files) or ``["a", "b"]``."""
    if isinstance(merge, str):
        a, b = merge.split(" ", 1)
        return a, b
    return merge[0], merge[1]


def base_size_of(spec: dict) -> int:
    """One past the highest id of a tokenizer.json (BPE vocab and added tokens)."""
    ids = list(spec["model"]["vocab"].values()) + [t["id"] for t in spec.get("added_tokens", [])]
    return max(ids) + 1


def bpe_pieces(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE of one pre-tokenised (byte-level) word: merge the lowest-rank adjacent pair until none
    applies (leftmost first among equal ranks), as the ``tokenizers`` BPE model does."""
    syms = list(word)
    while len(syms) > 1:
        best, at = None, -1
        for i in range(len(syms) - 1):
            r = ranks.get((syms[i], syms[i + 1]))
            if r is not None and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        syms[at:at + 2] = [syms[at] + syms[at + 1]]
    return syms


def _train_candidates(base_spec: dict, docs: Sequence[str], merges: int) -> list[str]:
    """Results of the first ``merges`` merges of a byte-level BPE trained on ``docs``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    base = Tokenizer.from_str(json.dumps(base_spec))
    tok = Tokenizer(models.BPE())
    if base.normalizer is not None:
        tok.normalizer = base.normalizer
    tok.pre_tokenizer = base.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=256 + merges, min_frequency=2, show_progress=False, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    return ["".join(_pair(m)) for m in json.loads(tok.to_str())["model"]["merges"]]


def extend_tokenizer(base_spec: dict, docs: Sequence[str], new_tokens: int) -> Extension:
    """Add up to ``new_tokens`` BPE tokens learnt from ``docs`` to ``base_spec`` (see module doc)."""
    from tokenizers import Tokenizer

    model = base_spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("dropout"):
        raise UserError("the base tokenizer must be a plain byte-level BPE (like Pythia's)")
    if new_tokens <= 0:
        raise UserError(f"--new-tokens must be > 0, got {new_tokens}")
    base_size = base_size_of(base_spec)
    vocab: dict[str, int] = dict(model["vocab"])
    merge_list = [_pair(m) for m in model["merges"]]
    ranks = {p: i for i, p in enumerate(merge_list)}
    added = {t["content"] for t in base_spec.get("added_tokens", [])}
    accepted: list[str] = []
    new_merges: list[tuple[str, str]] = []
    budget, seen = 4 * new_tokens, set()
    while len(accepted) < new_tokens:
        cands = _train_candidates(base_spec, docs, budget)
        pending = [t for t in cands if t not in vocab and t not in added and t not in seen]
        progress = True
        while pending and progress and len(accepted) < new_tokens:
            progress, left = False, []
            for t in pending:
                if len(accepted) == new_tokens:
                    break
                pieces = bpe_pieces(t, ranks)
                if len(pieces) != 2:
                    left.append(t)
                    continue
                ranks[(pieces[0], pieces[1])] = len(ranks)
                new_merges.append((pieces[0], pieces[1]))
                vocab[t] = base_size + len(accepted)
                accepted.append(t)
                seen.add(t)
                progress = True
            pending = left
        if len(cands) < budget or budget >= 64 * new_tokens:
            break  # the corpus has no more merges to offer
        budget *= 2
    if not accepted:
        raise UserError("the domain corpus yields no token the base vocabulary lacks")
    # ``tokenizers`` numbers an added token that the model vocab lacks from len(model vocab) on,
    # which the new tokens would shift: pin each one to its base id inside the model vocab.
    for t in base_spec.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    spec = json.loads(json.dumps(base_spec))
    spec["model"]["vocab"] = vocab
    as_strings = isinstance(model["merges"][0], str) if model["merges"] else False
    spec["model"]["merges"] = list(model["merges"]) + [
        f"{a} {b}" if as_strings else [a, b] for a, b in new_merges]
    old, new = Tokenizer.from_str(json.dumps(base_spec)), Tokenizer.from_str(json.dumps(spec))
    for t in base_spec.get("added_tokens", []):
        if new.token_to_id(t["content"]) != t["id"]:
            raise UserError(f"added token id {t['id']} would move in the extended tokenizer")
    pieces = [[t.id for t in old.model.tokenize(tok)] for tok in accepted]
    return Extension(spec, base_size, accepted, pieces)


def resize_embeddings(params: Params, base_size: int, pieces: Sequence[Sequence[int]],
                      multiple: int = VOCAB_MULTIPLE) -> Params:
    """Params with new rows ``base_size + i`` = mean of ``W[pieces[i]]`` in embed_in and embed_out.

    Padding rows ``base_size..V-1`` are reused first; V grows to a multiple of ``multiple`` only
    when ``base_size + len(pieces) > V`` (grown rows past the new tokens: mean of trained rows).
    """
    import jax.numpy as jnp

    V, d = params["embed_in"].shape
    if base_size > V:
        raise UserError(f"base tokenizer has {base_size} ids but the checkpoint only {V} rows")
    need = base_size + len(pieces)
    new_V = V if need <= V else multiple * math.ceil(need / multiple)
    out = dict(params)
    for name in EMBEDDINGS:
        w = np.asarray(params[name])
        w64 = w.astype(np.float64)
        trained = w64[:base_size].mean(axis=0)
        rows = np.concatenate([w64, np.broadcast_to(trained, (new_V - V, d))], axis=0)
        for i, ids in enumerate(pieces):
            ok = [j for j in ids if 0 <= j < base_size]
            rows[base_size + i] = w64[ok].mean(axis=0) if ok else trained
        out[name] = jnp.asarray(rows.astype(w.dtype))
    return out


def embedding_only_mask(params: Params, new_rows: Sequence[int] | np.ndarray) -> Params:
    """Trainable mask for ``cpt_jax.optim.make_optimizer``: only rows ``new_rows`` of embed_in
    and embed_out train ([V, 1] bool arrays); every other leaf is frozen (False)."""
    import jax

    V = params["embed_in"].shape[0]
    rows = np.zeros((V, 1), dtype=bool)
    rows[np.asarray(new_rows, dtype=np.int64)] = True
    mask = jax.tree.map(lambda _: False, params)
    for name in EMBEDDINGS:
        mask[name] = rows.copy()
    return mask


def load_new_rows(out_dir: str) -> list[int]:
    """The new embedding rows recorded in ``OUT/vocab.json`` by ``cpt-jax vocab extend``."""
    from pathlib import Path

    path = Path(out_dir) / RECORD
    try:
        return [int(i) for i in json.loads(path.read_text())["new_rows"]]
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (written by `cpt-jax vocab extend`)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a vocab.json of `cpt-jax vocab extend` ({err})") from None


def mask_embedding_rows(grads: Params, rows: Sequence[int] | np.ndarray) -> Params:
    """Gradients with everything zeroed except rows ``rows`` of embed_in and embed_out."""
    import jax
    import jax.numpy as jnp

    V = grads["embed_in"].shape[0]
    keep = np.zeros((V, 1), dtype=bool)
    keep[np.asarray(rows, dtype=np.int64)] = True
    out = jax.tree.map(jnp.zeros_like, grads)
    for name in EMBEDDINGS:
        out[name] = jnp.where(keep, grads[name], jnp.zeros((), grads[name].dtype))
    return out


def tokens_per_byte(tokenizer: Any, docs: Iterable[str]) -> float:
    """Tokens per UTF-8 byte of ``docs`` under ``tokenizer`` (a ``tokenizers.Tokenizer``)."""
    docs = list(docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    if n_bytes == 0:
        raise UserError("the corpus is empty")
    enc = tokenizer.encode_batch(docs, add_special_tokens=False)
    return sum(len(e.ids) for e in enc) / n_bytes


def extend_checkpoint(checkpoint: str, corpus: Sequence[str], new_tokens: int, out: str,
                      base_tokenizer: str | None = None, text_field: str = "text",
                      force: bool = False) -> dict:
    """Add ``new_tokens`` BPE tokens learnt on the ``corpus`` files (.txt/.jsonl/.parquet) to
    ``base_tokenizer`` (default: Pythia's) and resize ``checkpoint`` (params, run or Hugging Face
    dir) to match; write ``OUT/tokenizer.json``, the params and ``OUT/vocab.json``, whose
    record (sizes, new rows and tokens, tokens per byte before and after) is returned.
    ``out`` may not be a run dir or hold another verb's files unless ``force``."""
    import dataclasses
    from pathlib import Path

    from tokenizers import Tokenizer

    from cpt_jax.model.checkpoint import load_params, save_params

    if new_tokens <= 0:
        raise UserError(f"--new-tokens must be > 0, got {new_tokens}")
    ownership.check(out, OWNER, force)  # before reading anything
    base = load_tokenizer(base_tokenizer) if base_tokenizer else pythia_tokenizer()
    docs = list(readers.iter_documents(readers.expand_inputs(list(corpus)), text_field))
    if not docs:
        raise UserError("the domain corpus holds no documents")
    params, config = load_params(checkpoint)
    old_V = int(params["embed_in"].shape[0])
    if old_V != config.vocab_size:
        raise UserError(f"{checkpoint}: embed_in has {old_V} rows, model.json says vocab_size {config.vocab_size}")
    ext = extend_tokenizer(json.loads(base.to_str()), docs, new_tokens)
    params = resize_embeddings(params, ext.base_size, ext.pieces)
    config = dataclasses.replace(config, vocab_size=int(params["embed_in"].shape[0]))
    extended = Tokenizer.from_str(json.dumps(ext.spec))
    record = _record(ext, extended, old_V, config.vocab_size,
                     tokens_per_byte(base, docs), tokens_per_byte(extended, docs))
    folder = Path(out)
    ownership.claim(folder, OWNER, force)
    extended.save(str(folder / "tokenizer.json"))
    save_params(folder, params, config)
    (folder / RECORD).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def _record(ext: Extension, extended: Any, old_V: int, new_V: int, before: float, after: float) -> dict:
    """What ``vocab.json`` records of an extension (``extended``: its ``tokenizers.Tokenizer``)."""
    return {
        "base_size": ext.base_size, "old_vocab_size": old_V, "vocab_size": new_V,
        "new_rows": [int(i) for i in ext.new_ids],
        "new_tokens": [{"id": int(i), "token": t, "text": extended.decode([int(i)]),
                        "pieces": p} for i, t, p in zip(ext.new_ids, ext.new_tokens, ext.pieces)],
        "tokens_per_byte": {"before": before, "after": after},
    }
