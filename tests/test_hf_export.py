"""`convert --to-hf` writes a folder transformers uses as is: tokenizer, generation config, shards."""

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM, pipeline

from conftest import save_bpe_tokenizer
from cpt_jax import cli
from cpt_jax.errors import UserError
from cpt_jax.model import hf_export

torch.set_num_threads(1)
TEXTS = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
         "all that glitters is not gold", "the early bird catches the worm"] * 20
PROMPT = "the quick brown"


def _hf_folder(path, vocab=320, seed=0):
    """A tiny random GPT-NeoX saved by transformers, with its tokenizer.json beside it."""
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    model = GPTNeoXForCausalLM(cfg).eval()
    model.save_pretrained(path)
    save_bpe_tokenizer(path / "tokenizer.json", TEXTS, vocab_size=300)
    return model


def _greedy(model, ids, n=6):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()


def _check_folder(out, model, tok_file):
    """AutoTokenizer, AutoModelForCausalLM and the text-generation pipeline on ``out`` agree
    with the original model and the tokenizers library."""
    ref_tok = Tokenizer.from_file(str(tok_file))
    ids = ref_tok.encode(PROMPT).ids
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(PROMPT)["input_ids"] == ids
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        np.testing.assert_array_equal(again(torch.tensor([ids])).logits.numpy(),
                                      model(torch.tensor([ids])).logits.numpy())
    new = _greedy(model, ids)
    gen = pipeline("text-generation", model=str(out), device="cpu")
    text = gen(PROMPT, max_new_tokens=6, do_sample=False, eos_token_id=None,
               return_full_text=False)[0]["generated_text"]
    assert text == ref_tok.decode(new)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 0


def test_to_hf_from_hf_carries_the_tokenizer(tmp_path):
    model = _hf_folder(tmp_path / "hf")
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to", str(tmp_path / "ck")]) == 0
    # a params checkpoint has no tokenizer inside: --tokenizer names the source folder
    assert cli.main(["convert", "--from", str(tmp_path / "ck"), "--to-hf", str(tmp_path / "out"),
                     "--tokenizer", str(tmp_path / "hf")]) == 0
    _check_folder(tmp_path / "out", model, tmp_path / "hf" / "tokenizer.json")
    # straight from the HF folder: its own tokenizer.json is found
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to-hf", str(tmp_path / "o2")]) == 0
    assert (tmp_path / "o2" / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()


def test_sharded_export_loads_with_its_index(tmp_path):
    model = _hf_folder(tmp_path / "hf", seed=1)
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to-hf", str(tmp_path / "out"),
                     "--max-shard-size", "30KB"]) == 0
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    n = len(shards)
    assert shards == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    sizes = {k: v.numel() * 4 for k, v in model.state_dict().items()}
    assert index["metadata"]["total_size"] == sum(sizes[k if k in sizes else "lm_head.weight"]
                                                  for k in index["weight_map"])
    _check_folder(out, model, tmp_path / "hf" / "tokenizer.json")
    # a second, unsharded export into the same folder leaves no stale shards behind
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to-hf", str(out)]) == 0
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]


def test_plan_shards_and_sizes():
    t = {n: np.zeros(k, np.float32) for n, k in (("a", 10), ("b", 10), ("c", 100), ("d", 1))}
    assert hf_export.plan_shards(t, 80) == [["a", "b"], ["c"], ["d"]]
    assert hf_export.plan_shards(t, 10**6) == [["a", "b", "c", "d"]]
    assert hf_export.parse_size("5GB") == 5 * 10**9 and hf_export.parse_size("2GiB") == 2 * 2**30
    assert hf_export.parse_size(1234) == 1234
    with pytest.raises(UserError, match="shard size"):
        hf_export.parse_size("five")


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    _hf_folder(tmp_path / "hf", vocab=280)
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to-hf", str(tmp_path / "o")]) == 2
