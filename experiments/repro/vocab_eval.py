"""Held-out bits per byte over a domain's whole validation text, for comparing tokenizers.

The validation documents (each ending in EOS) are packed after one leading EOS into a stream
``s_0..s_n`` and cut into windows of ``T + 1`` tokens that overlap by one, so every token
``s_1..s_n`` is a scored target exactly once and the scored bytes are exactly the validation
text's UTF-8 bytes, whatever the tokenizer: ``bpb = sum_t l_t / (B ln 2)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cpt_jax.data.indexed import IndexedDataset
from cpt_jax.data.manifest import local_data_dir
from cpt_jax.data.tokenize import load_token_bytes

BATCH = 8


def _val_docs(data_dir: str, domain: str) -> list[np.ndarray]:
    ds = IndexedDataset(local_data_dir(data_dir) / domain / "val")
    return [np.asarray(ds[i], np.int64) for i in range(len(ds))]


def val_text(data_dir: str, domain: str, tokenizer_path: str | Path) -> list[str]:
    """The validation documents decoded back to text (their trailing EOS dropped)."""
    from cpt_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    eos = tok.token_to_id("<|endoftext|>")
    return [tok.decode([int(t) for t in (d[:-1] if len(d) and d[-1] == eos else d)],
                       skip_special_tokens=False) for d in _val_docs(data_dir, domain)]


def windows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``tokens [N, T+1]`` and ``mask [N, T]``: every target ``stream[1:]`` once (the last window
    zero-padded, its padding unscored)."""
    n = len(stream)
    starts = list(range(0, n - 1, seq_len))
    tokens = np.zeros((len(starts), seq_len + 1), np.int32)
    mask = np.zeros((len(starts), seq_len), np.float32)
    for i, s in enumerate(starts):
        piece = stream[s:s + seq_len + 1]
        tokens[i, :len(piece)] = piece
        mask[i, :len(piece) - 1] = 1.0
    return tokens, mask


def heldout_bpb(model: str, data_dir: str, domain: str, seq_len: int, cache: Path,
                name: str | None = None) -> float:
    """Bits per byte of ``model`` (run dir or params checkpoint) on the domain's validation text,
    cached in ``cache/<name>.json`` (keyed by the checkpoint it read)."""
    return heldout(model, data_dir, domain, seq_len, cache, name)["bpb"]


def heldout(model: str, data_dir: str, domain: str, seq_len: int, cache: Path,
            name: str | None = None) -> dict[str, float]:
    """``{"bpb", "loss"}`` (loss: nats per token) of ``model`` on the domain's validation text;
    see :func:`heldout_bpb`."""
    from cpt_jax.eval.perplexity import evaluate
    from cpt_jax.model.checkpoint import load_params

    name = name or Path(model).name
    summary = Path(model) / "summary.json"
    key = {"model": str(model), "data": str(data_dir), "seq_len": seq_len,
           "stamp": summary.stat().st_mtime_ns if summary.is_file() else 0}
    path = cache / f"{name}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return {"bpb": float(saved["bpb"]), "loss": float(saved["loss"])}
    params, config = load_params(model)
    docs = _val_docs(data_dir, domain)
    stream = np.concatenate([docs[0][-1:]] + docs)  # a leading EOS (each document ends in one)
    tokens, mask = windows(stream, seq_len)
    pad = (-len(tokens)) % BATCH
    tokens = np.concatenate([tokens, np.zeros((pad, seq_len + 1), np.int32)])
    mask = np.concatenate([mask, np.zeros((pad, seq_len), np.float32)])
    batches = [{"tokens": tokens[i:i + BATCH], "mask": mask[i:i + BATCH]} for i in range(0, len(tokens), BATCH)]
    tb = load_token_bytes(local_data_dir(data_dir))
    res = evaluate(params, config, {domain: batches}, token_bytes=tb)[domain]
    text_bytes = int(sum(tb[d].sum() for d in docs))
    if res["bytes"] != text_bytes:
        raise AssertionError(f"scored {res['bytes']} bytes, the validation text has {text_bytes}")
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "bpb": res["bpb"], "loss": res["loss"],
                                "tokens": res["tokens"], "bytes": res["bytes"]}) + "\n")
    return {"bpb": float(res["bpb"]), "loss": float(res["loss"])}
