"""The vocabulary part's pieces against hand computations: windows score every token once, the
hold-out fraction is recovered from the document split."""

import numpy as np

from cpt_jax.data.tokenize import is_val_document
from experiments.repro import corpus_bpe, vocab, vocab_eval


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
        got = corpus_bpe.val_fraction("math", 116, n_val)
        assert [is_val_document(i, "math", got) for i in range(116)] == \
            [is_val_document(i, "math", frac) for i in range(116)]


def _m(base, ext, loss0=3.0, vocab_rows=8192, tpb=(0.5, 0.4)):
    import math

    return {"bpb": {**{f"base_s{i}": v for i, v in enumerate(base)},
                    **{f"extended_s{i}": v for i, v in enumerate(ext)}},
            "base_runs": [f"base_s{i}" for i in range(len(base))],
            "ext_runs": [f"extended_s{i}" for i in range(len(ext))],
            "step0": {"base": {"loss": loss0, "bpb": 2.0}}, "uniform": math.log(vocab_rows),
            "tpb": {"base": tpb[0], "extended": tpb[1]}}


def test_judge_non_inferiority_against_scipy():
    import pytest
    from scipy import stats as sps

    from experiments.repro import stats

    base, ext = [1.50, 1.52, 1.49], [1.49, 1.505, 1.50]
    j = vocab.judge(_m(base, ext))
    assert j["verdict"] == stats.REPRODUCED
    margin = 0.02 * np.mean(base)
    # non-inferiority: base - (ext - margin), Welch
    ref = sps.ttest_ind(base, np.array(ext) - margin, equal_var=False)
    assert j["test"].p == pytest.approx(ref.pvalue)
    assert vocab.judge(_m(base, [1.7, 1.72, 1.69]))["verdict"] == stats.NOT_REPRODUCED
    assert vocab.judge(_m(base, ext, tpb=(0.5, 0.55)))["verdict"] == stats.NOT_REPRODUCED  # no compression
    # a model near uniform at step 0 has learnt nothing to extend
    j = vocab.judge(_m(base, ext, loss0=8.9))
    assert j["verdict"] == stats.CANNOT_TEST and "well below uniform: NOT met" in j["why"]
