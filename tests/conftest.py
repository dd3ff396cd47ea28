"""Shared test helpers.

The suite runs on the CPU. jax is kept to the CPU backend (subprocesses inherit it): the TPU and
CUDA compiler plugins that the ahead-of-time tests use would otherwise be probed, and warn, in
every process that imports jax.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402


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
