"""Shared test helpers."""

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers


def word_level_vocab(words: list[str]) -> dict[str, int]:
    """EOS = 0, [UNK] = 1, then one id per word: a tokenizer whose ids a test can predict."""
    return {"<|endoftext|>": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}


def save_word_level_tokenizer(path: Path, vocab: dict[str, int]) -> Path:
    """Write a whitespace-split word-level ``tokenizer.json`` over ``vocab`` to ``path``."""
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


def save_bpe_tokenizer(path: Path, texts: list[str], vocab_size: int = 300) -> Path:
    """Train a small byte-level BPE (``<|endoftext|>`` = id 0, as in Pythia) on ``texts`` and
    write its ``tokenizer.json`` to ``path``."""
    from tokenizers import decoders, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256 of the content}`` of every file under ``root`` (folders as
    "dir"): what a test compares before and after a command that must not change a run."""
    import hashlib
    import os

    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), root)] = hashlib.sha256(f.read()).hexdigest()
    return out
