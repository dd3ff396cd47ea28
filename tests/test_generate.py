"""KV-cache generation against Hugging Face `generate` and our own full forward."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import GPTNeoXForCausalLM

from conftest import tiny_pythia
from cpt_jax import cli
from cpt_jax import generate as gen
from cpt_jax.errors import UserError
from cpt_jax.model import pythia

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(1)
PROMPTS = ["the quick brown", "a stitch in time saves nine! all that glitters is", "café 東京 🙂",
           "the", "and so on the early bird catches"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    ckpt, hf_dir, params, config = tiny_pythia(root)
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    return ckpt, hf_dir, params, config, tok


def _hf_greedy(hf_model, ids, n):
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                pad_token_id=0, eos_token_id=0)
    new = out[0, len(ids):].tolist()
    return new[:new.index(0)] if 0 in new else new


def test_greedy_tokens_equal_transformers_generate(model):
    _, hf_dir, params, config, tok = model
    hf_model = GPTNeoXForCausalLM.from_pretrained(hf_dir).eval()
    ids = [e.ids for e in tok.encode_batch(PROMPTS, add_special_tokens=False)]
    assert len({len(i) for i in ids}) == len(ids)  # unequal lengths share batches
    ours = gen.generate_ids(params, config, ids, 20, batch_size=3, chunk=8)
    ref = [_hf_greedy(hf_model, i, 20) for i in ids]
    assert ours == ref
    assert sum(len(r) for r in ref) > 40  # not all stopped at once on EOS


def test_cached_logits_equal_full_forward(model):
    _, _, params, config, _ = model
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, config.vocab_size, n).tolist() for n in (21, 13, 6)]
    prompt_lens = (9, 3, 1)
    B, P, S = 3, 16, 16 + 24
    tokens = np.zeros((B, P), np.int32)
    valid = np.zeros((B, P), bool)
    for r, (seq, n) in enumerate(zip(seqs, prompt_lens)):
        tokens[r, P - n:], valid[r, P - n:] = seq[:n], True
    positions = np.maximum(np.arange(P)[None] - (P - np.array(prompt_lens)[:, None]), 0)
    cache = gen.init_cache(config, B, S)
    extend = jax.jit(gen.extend, static_argnums=6)
    h, cache = extend(params, cache, tokens, positions, valid, 0, config)
    got = [[np.asarray(pythia.unembed(params, h[r, P - n:]))] for r, n in enumerate(prompt_lens)]
    for i in range(max(len(s) - n for s, n in zip(seqs, prompt_lens))):  # then one token at a time
        step = np.array([[s[min(n + i, len(s) - 1)]] for s, n in zip(seqs, prompt_lens)], np.int32)
        pos = np.array([[n + i] for n in prompt_lens])
        h, cache = extend(params, cache, step, pos, np.ones((B, 1), bool), np.int32(P + i), config)
        for r, (s, n) in enumerate(zip(seqs, prompt_lens)):
            if n + i < len(s):
                got[r].append(np.asarray(pythia.unembed(params, h[r])))
    for r, s in enumerate(seqs):
        full = np.asarray(pythia.forward(params, np.array([s]), config))[0]
        np.testing.assert_allclose(np.concatenate(got[r]), full, atol=1e-4, rtol=0)
        assert full.std() > 1.0


def test_sampling_is_reproducible_and_follows_top_k_top_p():
    logits = np.log(np.array([[0.4, 0.25, 0.15, 0.1, 0.06, 0.04]], np.float32))
    many = np.repeat(logits, 4000, axis=0)
    s = gen.Sampling(temperature=1.0, top_k=4, top_p=0.7)
    draws = np.asarray(gen.choose(many, jax.random.key(3), s))
    np.testing.assert_array_equal(draws, np.asarray(gen.choose(many, jax.random.key(3), s)))
    # top 4 kept (renormalised: .444, .278, .167, .111), then the smallest head reaching 0.7
    expect = np.array([0.4, 0.25]) / 0.65
    freq = np.bincount(draws, minlength=6) / len(draws)
    np.testing.assert_allclose(freq[:2], expect, atol=0.03)
    assert freq[2:].sum() == 0
    t = gen.Sampling(temperature=0.5)  # softmax(logits / 0.5) ~ p^2
    freq = np.bincount(np.asarray(gen.choose(many, jax.random.key(4), t)), minlength=6) / len(many)
    p2 = np.exp(logits[0]) ** 2
    np.testing.assert_allclose(freq, p2 / p2.sum(), atol=0.03)


def test_sampled_generation_repeats_with_its_seed(model):
    _, _, params, config, tok = model
    s = gen.Sampling(temperature=1.0, top_k=50, top_p=0.95)
    run = lambda seed: gen.generate_text(params, config, tok, PROMPTS, 12, s, seed=seed, batch_size=3)
    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_stop_strings_and_dtype_spellings(model):
    _, _, params, config, tok = model
    full = gen.generate_text(params, config, tok, PROMPTS, 30)
    stop = next(c for text in full for c in text[3:] if c.strip())  # a character some completion has
    cut = gen.generate_text(params, config, tok, PROMPTS, 30, stop=[stop])
    assert cut == [t.split(stop)[0] for t in full]
    for dtype in (jax.numpy.float32, np.float32, "float32"):
        assert gen.generate_text(params, config, tok, PROMPTS[:2], 5, dtype=dtype) == \
            [t for t in gen.generate_text(params, config, tok, PROMPTS[:2], 5)]
    with pytest.raises(UserError, match="dtype 'int8' is not one of"):
        gen.generate_text(params, config, tok, PROMPTS[:1], 5, dtype=np.int8)


def test_generate_command(model, tmp_path, capsys):
    ckpt, _, params, config, tok = model
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[1:]))
    out = tmp_path / "out.jsonl"
    args = ["generate", "--checkpoint", str(ckpt), "--tokenizer", str(model[1] / "tokenizer.json"),
            "--prompt", PROMPTS[0], "--prompts-file", str(prompts), "--max-new-tokens", "9", "--out", str(out)]
    assert cli.main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["completion"] for r in rows] == gen.generate_text(params, config, tok, PROMPTS, 9)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 1}\n')
    assert cli.main(["generate", "--checkpoint", str(ckpt), "--prompts-file", str(bad)]) == 2
    assert "bad.jsonl line 1: not a JSON string" in capsys.readouterr().err


def test_benchmark_script_runs():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import generate as bench

    r = bench.main(["--batch", "2", "--prompt-len", "5", "--new", "6", "--repeats", "1", "--layers", "1",
                    "--hidden", "32", "--vocab", "128"])
    assert r["ours_tok_s"] > 0 and r["hf_tok_s"] > 0 and r["ratio"] > 0
