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


TINY_TEXTS = ["the quick brown fox jumps over the lazy dog.", "a stitch in time saves nine!",
              "all that glitters is not gold", "café au lait, crème brûlée, 東京 and Łódź 🙂",
              "the early bird catches the worm\n\nand so on"] * 20


def tiny_pythia(root: Path, seed: int = 0, std: float = 0.3, max_len: int = 128, sequential: bool = False):
    """A tiny random Pythia (weights ~ N(0, std), LayerNorm scales ~ N(1, std): attention far
    from uniform, logits spread) saved as a params checkpoint ``root/ckpt`` beside a byte-level BPE
    ``root/tokenizer.json``, and exported by ``cpt-jax convert --to-hf`` to ``root/hf``.
    Returns ``(checkpoint, hf folder, params, config)``."""
    import jax
    import numpy as np

    from cpt_jax import cli
    from cpt_jax.model import checkpoint, pythia

    tok = save_bpe_tokenizer(root / "tokenizer.json", TINY_TEXTS, vocab_size=300)
    config = pythia.PythiaConfig(vocab_size=304, hidden_size=32, num_layers=2, num_heads=4,
                                 intermediate_size=64, rotary_pct=0.5, max_position_embeddings=max_len,
                                 use_parallel_residual=not sequential)
    shapes = pythia.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(seed)
    draw = lambda path, a: (std * rng.standard_normal(a.shape) + (path[-1].key == "scale")).astype(np.float32)
    params = jax.tree_util.tree_map_with_path(draw, shapes)  # LayerNorm scales around 1
    ckpt = checkpoint.save_params(root / "ckpt", params, config)
    assert cli.main(["convert", "--from", str(ckpt), "--to-hf", str(root / "hf"), "--tokenizer", str(tok)]) == 0
    return ckpt, root / "hf", params, config


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
