"""The Pallas TPU splash-attention path, checked on CPU.

The kernel runs here in Pallas interpret mode (``interpret=True``, chosen automatically off
TPU): its outputs and gradients are compared with ``xla`` attention at fp32 precision. The
selection logic (``auto`` on a faked TPU backend) and the ``chunked`` fallback are tested too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax.errors import UserError
from cpt_jax.model import attention as attn
from cpt_jax.model import pythia

needs_kernel = pytest.mark.skipif(attn._splash_lib() is None, reason="this JAX has no splash kernel")


def _qkv(b: int, t: int, h: int, d: int, seed: int = 0) -> tuple[jax.Array, ...]:
    # scaled so the softmax is peaked (near-uniform attention would hide masking errors)
    keys = jax.random.split(jax.random.key(seed), 3)
    return tuple(3.0 * jax.random.normal(k, (b, t, h, d), jnp.float32) for k in keys)


def _loss(fn, q, k, v, w):
    return jnp.sum(fn(q, k, v) * w)


@needs_kernel
@pytest.mark.parametrize("t,d", [(256, 64), (256, 128), (200, 80)])
def test_splash_matches_xla_values_and_gradients(t, d):
    """Forward and d/dq, d/dk, d/dv agree with the einsum reference; T=200 and hd=80 exercise
    the padding of T to 256 and of hd to 128."""
    with jax.default_matmul_precision("highest"):
        q, k, v = _qkv(1, t, 2, d)
        w = jax.random.normal(jax.random.key(9), q.shape)
        ref = lambda q, k, v: attn.causal_attention(q, k, v, "xla")  # noqa: E731
        got = lambda q, k, v: attn.causal_attention(q, k, v, "splash", block_q=128, block_kv=128)  # noqa: E731
        np.testing.assert_allclose(got(q, k, v), ref(q, k, v), rtol=1e-4, atol=1e-4)
        g_ref = jax.grad(_loss, argnums=(1, 2, 3))(ref, q, k, v, w)
        g_got = jax.grad(_loss, argnums=(1, 2, 3))(got, q, k, v, w)
    for a, b in zip(g_got, g_ref):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, atol=2e-4 * scale, rtol=1e-3)


@needs_kernel
def test_splash_batch_and_block_sizes():
    """B > 1 (vmapped kernel) and a block request larger than T, clipped to T."""
    with jax.default_matmul_precision("highest"):
        q, k, v = _qkv(2, 128, 2, 64, seed=3)
        out = attn.causal_attention(q, k, v, "splash", block_q=512, block_kv=1024)
        np.testing.assert_allclose(out, attn.causal_attention(q, k, v, "xla"), rtol=1e-4, atol=1e-4)


def test_block_choice():
    assert attn.splash_block(512, 2048) == 512
    assert attn.splash_block(512, 256) == 256
    assert attn.splash_block(512, 640) == 128  # 640 = 5 x 128: no 256/384/512 divides it
    assert attn.splash_block(512, 768) == 384
    assert attn.splash_block(128, 4096) == 128


@pytest.fixture
def fake_tpu(monkeypatch):
    monkeypatch.setattr(attn, "_backend", lambda: "tpu")
    monkeypatch.setattr(attn, "_printed", set())


@needs_kernel
@pytest.mark.parametrize("head_dim", [64, 80, 128, 256, 65, 100])
def test_auto_picks_splash_on_tpu(fake_tpu, head_dim, capsys):
    assert attn.resolve("auto", head_dim, jnp.bfloat16, 2048, 512) == "splash"
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("head_dim", [8, 16, 32, 33, 63])
def test_small_heads_fall_back_to_chunked_with_one_line(fake_tpu, head_dim, capsys):
    for _ in range(3):  # traced several times: still one line
        assert attn.resolve("auto", head_dim, jnp.bfloat16, 2048, 512) == "chunked"
        assert attn.resolve("splash", head_dim, jnp.float32, 256, 512) == "chunked"
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and f"head size {head_dim}" in lines[0] and "chunked" in lines[0]


def test_missing_kernel_falls_back(fake_tpu, monkeypatch, capsys):
    monkeypatch.setattr(attn, "_splash_lib", lambda: None)
    assert attn.resolve("auto", 128, jnp.bfloat16, 2048, 512) == "chunked"
    assert "no Pallas TPU splash-attention kernel" in capsys.readouterr().out


def test_auto_off_tpu_unchanged(monkeypatch):
    monkeypatch.setattr(attn, "_backend", lambda: "cpu")
    assert attn.resolve("auto", 64, jnp.float32, 2048, 512) == "chunked"
    assert attn.resolve("auto", 64, jnp.float32, 256, 512) == "xla"


@needs_kernel
def test_model_with_splash_matches_xla():
    """A tiny Pythia's logits through the model's attention call site."""
    shape = dict(vocab_size=64, hidden_size=128, num_layers=2, num_heads=2, rotary_pct=0.25)
    base = pythia.PythiaConfig(**shape, attention="xla")
    params = pythia.init_params(base, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 128), 0, 64)
    with jax.default_matmul_precision("highest"):
        ref = pythia.forward(params, tokens, base)
        got = pythia.forward(params, tokens, pythia.PythiaConfig(**shape, attention="splash",
                                                                 attention_block_q=128,
                                                                 attention_block_kv=128))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_block_sizes_validated():
    with pytest.raises(UserError, match="multiple of 128"):
        pythia.PythiaConfig(attention_block_q=100)
