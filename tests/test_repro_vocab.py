"""The vocabulary part's pieces against hand computations: windows score every token once, the
hold-out fraction is recovered from the document split."""

import numpy as np

from cpt_jax.data.tokenize import is_val_document
from experiments.repro import vocab, vocab_eval


def test_windows_score_every_target_once():
    stream = np.arange(1, 12)  # 11 tokens: 10 targets
    tokens, mask = vocab_eval.windows(stream, 4)
    assert tokens.shape == (3, 5) and mask.shape == (3, 4)
    scored = [int(tokens[i, j + 1]) for i in range(3) for j in range(4) if mask[i, j]]
    assert scored == list(range(2, 12))
    assert tokens[0].tolist() == [1, 2, 3, 4, 5] and tokens[1].tolist() == [5, 6, 7, 8, 9]
    assert tokens[2].tolist() == [9, 10, 11, 0, 0] and mask[2].tolist() == [1, 1, 0, 0]


def test_val_fraction_is_recovered_from_the_split():
    for frac in (0.05, 0.2):
        n_val = sum(is_val_document(i, "math", frac) for i in range(116))
        got = vocab._val_fraction("math", 116, n_val)
        assert [is_val_document(i, "math", got) for i in range(116)] == \
            [is_val_document(i, "math", frac) for i in range(116)]
