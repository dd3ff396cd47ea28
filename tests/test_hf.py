"""Hugging Face GPT-NeoX interop, checked against transformers (CPU torch) on tiny random models."""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from cpt_jax.errors import UserError
from cpt_jax.model import checkpoint, hf, torch_bin
from cpt_jax.model.pythia import PythiaConfig

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(1)

T = 11


def _hf_model(seed=0, std=0.02, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=67, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=80, rotary_pct=0.25, rotary_emb_base=10000.0,
               max_position_embeddings=64, initializer_range=std)
    cfg.update(kw)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**cfg)).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so every tensor matters
        for name, p in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _tokens(vocab, seed=0):
    return np.random.RandomState(seed).randint(0, vocab, (2, T)).astype(np.int32)


def _hf_logits(model, toks):
    with torch.no_grad():
        return model(torch.tensor(toks, dtype=torch.long)).logits.float().numpy()


def _respell(path, spelling):
    """Rewrite config.json's rotary settings in one of the three spellings."""
    f = path / "config.json"
    c = json.loads(f.read_text())
    rope = c.pop("rope_parameters")
    for k in ("rotary_pct", "rotary_emb_base", "partial_rotary_factor", "rope_theta"):
        c.pop(k, None)
    if spelling == "rotary_pct":
        c.update(rotary_pct=rope["partial_rotary_factor"], rotary_emb_base=rope["rope_theta"])
    elif spelling == "partial_rotary_factor":
        c.update(partial_rotary_factor=rope["partial_rotary_factor"], rope_theta=rope["rope_theta"])
    else:
        c["rope_parameters"] = rope
    f.write_text(json.dumps(c))


def _write_bin(model, path, shards=1, half=False, buffers=True):
    """pytorch_model.bin (optionally sharded with an index), as older transformers wrote it,
    including the attention buffers original Pythia files carry."""
    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    sd = {k: (v.half() if half else v).clone() for k, v in model.state_dict().items()}
    sd["embed_out.weight"] = sd.pop("lm_head.weight")  # the name in real Pythia files
    if buffers:
        L, n = model.config.num_hidden_layers, model.config.max_position_embeddings
        for i in range(L):
            sd[f"gpt_neox.layers.{i}.attention.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]
            sd[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
            sd[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(2)
    if shards == 1:
        torch.save(sd, path / "pytorch_model.bin")
        return
    names = list(sd)
    weight_map = {}
    for s in range(shards):
        fname = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        part = {k: sd[k] for k in names[s::shards]}
        torch.save(part, path / fname)
        weight_map.update({k: fname for k in part})
    (path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


CASES = [  # (hf config, file format, config.json spelling)
    (dict(), "safetensors", "rope_parameters"),
    (dict(hidden_size=48, num_attention_heads=2, rotary_pct=0.5, use_parallel_residual=False,
          vocab_size=101), "sharded_safetensors", "rotary_pct"),  # hd 24, r = 12
    (dict(hidden_size=40, num_attention_heads=2, rotary_pct=1.0, rotary_emb_base=500.0,
          vocab_size=53, num_hidden_layers=3), "bin", "partial_rotary_factor"),  # hd 20, r = 20
    (dict(hidden_size=36, num_attention_heads=3, rotary_pct=0.5, use_parallel_residual=False,
          attention_bias=False, vocab_size=71), "sharded_bin", "rotary_pct"),  # hd 12, r = 6
]


@pytest.mark.parametrize("kw,fmt,spelling", CASES)
def test_fp32_logits_match_transformers(tmp_path, kw, fmt, spelling):
    model = _hf_model(**kw)
    if fmt == "safetensors":
        model.save_pretrained(tmp_path)
    elif fmt == "sharded_safetensors":
        model.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").exists()
    else:
        _write_bin(model, tmp_path, shards=2 if fmt == "sharded_bin" else 1)
    _respell(tmp_path, spelling)
    ours = hf.load(tmp_path)
    toks = _tokens(model.config.vocab_size)
    diff = np.abs(np.asarray(ours(toks)) - _hf_logits(model, toks)).max()
    assert diff <= 1e-4, diff
    assert ours.config.rotary_dim == int(model.config.hidden_size // model.config.num_attention_heads
                                         * model.config.rope_parameters["partial_rotary_factor"])


def test_fp16_bin_with_buffers_matches_fp16_rounded_weights(tmp_path):
    model = _hf_model(seed=3)
    _write_bin(model, tmp_path, half=True)
    params, cfg = hf.load_params(tmp_path, dtype=None)
    assert params["embed_in"].dtype == np.float16 and cfg.param_dtype == "float16"
    model.half().float()  # the reference: fp16-rounded weights computed in fp32
    ours = hf.load(tmp_path, dtype="float32")
    toks = _tokens(67, 1)
    assert np.abs(np.asarray(ours(toks)) - _hf_logits(model, toks)).max() <= 1e-4


@pytest.mark.parametrize("dtype", [jax.numpy.float32, np.float32, "float32", np.dtype("float32"),
                                   jax.numpy.bfloat16, "bfloat16"])
def test_dtype_spellings_are_equal(tmp_path, dtype):
    model = _hf_model(seed=4)
    model.save_pretrained(tmp_path)
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    ref = hf.load(tmp_path, dtype=name)
    ours = hf.load(tmp_path, dtype=dtype)
    assert ours.config.param_dtype == ours.config.compute_dtype == name
    toks = _tokens(67, 2)
    np.testing.assert_array_equal(np.asarray(ours(toks)), np.asarray(ref(toks)))
    assert PythiaConfig(param_dtype=dtype, compute_dtype=dtype) == PythiaConfig(param_dtype=name, compute_dtype=name)


def test_bad_dtype_names_the_argument_not_a_file(tmp_path):
    _hf_model().save_pretrained(tmp_path)
    with pytest.raises(UserError, match=r"^dtype 'int8' is not one of float32, bfloat16, float16$"):
        hf.load(tmp_path, dtype=np.int8)
    with pytest.raises(UserError, match=r"^model.param_dtype 'float64' is not one of"):
        PythiaConfig(param_dtype=jax.numpy.float64)


def test_bf16_agrees_by_top1_and_kl(tmp_path):
    model = _hf_model(seed=1, std=0.2, hidden_size=64, num_attention_heads=4, vocab_size=97)
    model.save_pretrained(tmp_path)
    toks = np.random.RandomState(2).randint(0, 97, (4, 16)).astype(np.int32)
    ref = torch.log_softmax(torch.tensor(_hf_logits(model, toks)), -1).numpy()
    ours = hf.load(tmp_path, dtype="bfloat16")
    assert ours.params()["layers"]["qkv"]["kernel"].dtype == jax.numpy.bfloat16
    lp = np.asarray(jax.nn.log_softmax(ours(toks).astype(np.float32), -1))
    kl = np.mean(np.sum(np.exp(ref) * (ref - lp), -1))
    top1 = np.mean(ref.argmax(-1) == lp.argmax(-1))
    assert kl < 5e-3 and top1 >= 0.95, (kl, top1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_hf_ours_hf_is_byte_identical(tmp_path, dtype):
    model = _hf_model(seed=2, use_parallel_residual=False).to(dtype)
    model.save_pretrained(tmp_path / "a")
    hf.save(hf.load(tmp_path / "a", dtype=None), tmp_path / "b")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == dtype and a[k].shape == b[k].shape, k
        assert a[k].contiguous().view(torch.uint8).numpy().tobytes() == \
            b[k].contiguous().view(torch.uint8).numpy().tobytes(), k
    again = GPTNeoXForCausalLM.from_pretrained(tmp_path / "b").eval()
    assert again.dtype == dtype
    toks = _tokens(67)
    np.testing.assert_array_equal(_hf_logits(again, toks), _hf_logits(model, toks))


def test_save_from_our_params_loads_in_transformers_with_equal_logits(tmp_path):
    from cpt_jax.model import pythia

    cfg = pythia.PythiaConfig(vocab_size=59, hidden_size=24, num_layers=2, num_heads=2,
                              rotary_pct=0.5, rotary_emb_base=1000.0, use_parallel_residual=False)
    params = pythia.init_params(cfg, jax.random.key(0))
    hf.save(params, tmp_path, cfg)
    model = GPTNeoXForCausalLM.from_pretrained(tmp_path).eval()
    toks = _tokens(59)
    diff = np.abs(np.asarray(pythia.forward(params, toks, cfg)) - _hf_logits(model, toks)).max()
    assert diff <= 1e-4, diff


def test_bin_reader_never_imports_torch(tmp_path):
    model = _hf_model(seed=4)
    _write_bin(model, tmp_path, shards=2)
    toks = _tokens(67)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import jax, numpy as np
        jax.config.update("jax_default_matmul_precision", "highest")
        from cpt_jax.model import hf
        toks = np.array({toks.tolist()}, dtype=np.int32)
        np.save(sys.argv[1], np.asarray(hf.load(sys.argv[2])(toks)))
        assert sys.modules["torch"] is None
    """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.npy"), str(tmp_path)], check=True)
    assert np.abs(np.load(tmp_path / "out.npy") - _hf_logits(model, toks)).max() <= 1e-4


def test_bin_reader_handles_views_offsets_and_dtypes(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"view": base[1:, ::2], "t": base.t(), "bf": torch.randn(5).to(torch.bfloat16),
          "i": torch.arange(7), "b": torch.tensor([True, False])}
    torch.save(sd, tmp_path / "x.bin")
    refs = torch_bin.read_state_dict(tmp_path / "x.bin")
    for k, v in sd.items():
        got = refs[k].read()
        assert got.shape == tuple(v.shape), k
        np.testing.assert_array_equal(got.astype(np.float64), v.double().numpy(), err_msg=k)
    torch.save({"evil": torch.nn.Linear(2, 2)}, tmp_path / "mod.bin")
    with pytest.raises(UserError, match="refusing to unpickle"):
        torch_bin.read_state_dict(tmp_path / "mod.bin")


def test_missing_or_misshapen_tensor_is_a_clear_error(tmp_path):
    model = _hf_model(seed=5)
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    name = "gpt_neox.layers.1.mlp.dense_4h_to_h.weight"
    save_file({k: v for k, v in sd.items() if k != name}, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=f"tensor {name} is missing"):
        hf.load(tmp_path)
    sd[name] = sd[name][:, :-1].contiguous()
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=rf"tensor {name} has shape \(32, 79\)"):
        hf.load(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights in"):
        hf.load(tmp_path)


def test_lm_head_name_and_checkpoint_load_params_on_hf_dir(tmp_path):
    model = _hf_model(seed=6)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert "lm_head.weight" in sd  # transformers 5's in-memory name (files say embed_out)
    model.config.save_pretrained(tmp_path)
    save_file(sd, tmp_path / "model.safetensors")
    params, cfg = checkpoint.load_params(tmp_path)
    np.testing.assert_array_equal(np.asarray(params["embed_out"]), sd["lm_head.weight"].numpy())
    assert cfg.vocab_size == 67 and cfg.num_layers == 2


def test_convert_cli_round_trip(tmp_path):
    from cpt_jax import cli

    model = _hf_model(seed=7, use_parallel_residual=False)
    model.save_pretrained(tmp_path / "hf")
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to", str(tmp_path / "ck")]) == 0
    params, cfg = checkpoint.load_params(tmp_path / "ck")
    assert cfg.use_parallel_residual is False
    assert cli.main(["convert", "--from", str(tmp_path / "ck"), "--to-hf", str(tmp_path / "hf2")]) == 0
    again = GPTNeoXForCausalLM.from_pretrained(tmp_path / "hf2").eval()
    toks = _tokens(67)
    np.testing.assert_array_equal(_hf_logits(again, toks), _hf_logits(model, toks))
    assert cli.main(["convert", "--from", str(tmp_path / "nowhere"), "--to-hf", str(tmp_path / "x")]) == 2
