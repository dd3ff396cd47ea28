"""Model shape, presets and internal consistency (HF parity lives in test_hf_parity.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax.model import pythia
from cpt_jax.model.presets import PRESETS
from cpt_jax.model.pythia import PythiaConfig

jax.config.update("jax_default_matmul_precision", "highest")

# The Pythia paper's table of total parameters.
PAPER_COUNTS = {
    "14m": 14_067_712, "31m": 30_494_720, "70m": 70_426_624, "160m": 162_322_944,
    "410m": 405_334_016, "1b": 1_011_781_632, "1.4b": 1_414_647_808,
    "2.8b": 2_775_208_960, "6.9b": 6_857_302_016, "12b": 11_846_072_320,
}

TINY = PythiaConfig(vocab_size=97, hidden_size=32, num_layers=3, num_heads=4, rotary_pct=0.5)


@pytest.mark.parametrize("name", list(PAPER_COUNTS))
def test_preset_parameter_counts_equal_the_paper(name):
    p = PRESETS[name]
    cfg = PythiaConfig(vocab_size=p.vocab_size, hidden_size=p.hidden_size,
                       num_layers=p.num_layers, num_heads=p.num_heads)
    assert pythia.count_params(cfg) == PAPER_COUNTS[name]


def test_count_params_of_a_tree_equals_the_formula():
    """A params tree (arrays or shapes) counts as its config does: the GPT-NeoX formula
    2 V d + L (12 d^2 + 13 d) + 2 d (untied embeddings, 4 d MLP, biases, two LayerNorms per
    layer and a final one)."""
    V, d, L = TINY.vocab_size, TINY.hidden_size, TINY.num_layers
    formula = 2 * V * d + L * (12 * d * d + 13 * d) + 2 * d
    params = pythia.init_params(TINY, jax.random.key(0))
    shapes = jax.eval_shape(lambda: pythia.init_params(TINY, jax.random.key(0)))
    assert pythia.count_params(TINY) == pythia.count_params(params) == pythia.count_params(shapes) == formula
    assert sum(np.asarray(x).size for x in jax.tree.leaves(params)) == formula


def test_preset_rotary_dims_match_reference():
    expected = {"14m": 8, "31m": 8, "70m": 16, "160m": 16, "410m": 16, "1b": 64,
                "1.4b": 32, "2.8b": 20, "6.9b": 32, "12b": 32}
    for name, r in expected.items():
        p = PRESETS[name]
        cfg = PythiaConfig(hidden_size=p.hidden_size, num_heads=p.num_heads, rotary_pct=p.rotary_pct)
        assert cfg.rotary_dim == r, name


def test_initialisation_std_is_small_init_and_wang_init():
    cfg = PythiaConfig(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=4)
    p = pythia.init_params(cfg, jax.random.key(0))
    d, L = 256, 4
    np.testing.assert_allclose(np.std(p["embed_in"]), np.sqrt(2 / (5 * d)), rtol=0.02)
    np.testing.assert_allclose(np.std(p["layers"]["qkv"]["kernel"]), np.sqrt(2 / (5 * d)), rtol=0.02)
    np.testing.assert_allclose(np.std(p["layers"]["fc2"]["kernel"]), 2 / (L * np.sqrt(d)), rtol=0.02)
    assert np.all(p["layers"]["ln1"]["scale"] == 1) and np.all(p["layers"]["fc1"]["bias"] == 0)


def test_forward_is_causal_and_shaped():
    params = pythia.init_params(TINY, jax.random.key(1))
    toks = np.random.RandomState(0).randint(0, 97, (2, 12))
    logits = pythia.forward(params, toks, TINY)
    assert logits.shape == (2, 12, 97) and logits.dtype == jnp.float32
    changed = toks.copy()
    changed[:, 7:] = (changed[:, 7:] + 1) % 97
    other = pythia.forward(params, changed, TINY)
    np.testing.assert_array_equal(np.asarray(logits[:, :7]), np.asarray(other[:, :7]))
    assert not np.allclose(logits[:, 7:], other[:, 7:])


@pytest.mark.parametrize("variant", [
    dict(scan_layers=False), dict(attention="chunked", attention_chunk=5),
    dict(remat="full"), dict(remat="dots"),
])
def test_variants_compute_the_same_function_and_gradient(variant):
    params = pythia.init_params(TINY, jax.random.key(2))
    toks = np.random.RandomState(1).randint(0, 97, (2, 13))
    other = dataclasses.replace(TINY, **variant)

    def loss(p, cfg):
        return jnp.mean(jax.nn.log_softmax(pythia.forward(p, toks, cfg))[..., 0])

    v0, g0 = jax.value_and_grad(loss)(params, TINY)
    v1, g1 = jax.value_and_grad(loss)(params, other)
    np.testing.assert_allclose(v0, v1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_nnx_module_wraps_the_functional_core():
    from flax import nnx

    model = pythia.Pythia(TINY, rngs=nnx.Rngs(3))
    params = pythia.pure_params(model)
    toks = np.arange(10)[None] % 97
    np.testing.assert_array_equal(np.asarray(model(toks)), np.asarray(pythia.forward(params, toks, TINY)))
    assert jax.tree.structure(params) == jax.tree.structure(pythia.init_params(TINY, jax.random.key(0)))


def test_logical_axes_cover_every_leaf_with_matching_rank():
    cfg = dataclasses.replace(TINY, attention_bias=False)
    params = pythia.init_params(cfg, jax.random.key(0))
    axes = pythia.logical_axes(params)
    for leaf, names in zip(jax.tree.leaves(params), jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
        assert len(names) == leaf.ndim
    assert "bias" not in params["layers"]["qkv"]


def test_position_interpolation_scales_positions():
    params = pythia.init_params(TINY, jax.random.key(4))
    toks = np.random.RandomState(2).randint(0, 97, (1, 8))
    stretched = dataclasses.replace(TINY, rope_scaling=2.0)
    a = pythia.forward(params, toks, stretched)
    b = pythia.forward(params, toks, TINY, positions=jnp.arange(8) / 2.0)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_bad_shape_is_a_clear_error():
    from cpt_jax.errors import UserError

    with pytest.raises(UserError, match="not divisible"):
        PythiaConfig(hidden_size=30, num_heads=4)
