"""AdamW as GPT-NeoX trains: decay mask, clipping, fp32 moments, trainable masks -- against a
hand-written numpy AdamW."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax import config as config_lib
from cpt_jax.model import pythia
from cpt_jax.optim import decay_mask, make_optimizer
from cpt_jax.schedules import make_schedule

MODEL = pythia.PythiaConfig(vocab_size=32, hidden_size=8, num_layers=2, num_heads=2)


def _cfg(**optim):
    cfg = config_lib.defaults()
    cfg.schedule.name = "constant"
    for k, v in optim.items():
        cfg.optim[k] = v
    return cfg


def _tx(cfg, trainable=None):
    """The optimizer of ``cfg`` over 10 steps."""
    return make_optimizer(cfg.optim, make_schedule(cfg.schedule, cfg.optim.peak_lr, 10), trainable)


def _flat(tree):
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_decay_mask_matches_gpt_neox_list():
    params = pythia.init_params(MODEL, jax.random.key(0))
    mask = _flat(decay_mask(params))
    decayed = {"embed_in", "embed_out", "layers/qkv/kernel", "layers/out/kernel",
               "layers/fc1/kernel", "layers/fc2/kernel"}
    not_decayed = {"layers/qkv/bias", "layers/out/bias", "layers/fc1/bias", "layers/fc2/bias",
                   "layers/ln1/scale", "layers/ln1/bias", "layers/ln2/scale", "layers/ln2/bias",
                   "final_ln/scale", "final_ln/bias"}
    assert set(mask) == decayed | not_decayed
    assert {k for k, v in mask.items() if v} == decayed


def numpy_adamw(theta, grads, steps, lr, b1, b2, eps, wd, clip, mask):
    """Reference AdamW (Loshchilov & Hutter, decoupled decay) with global-norm clipping."""
    theta = {k: np.asarray(v, np.float64) for k, v in theta.items()}
    mu = {k: np.zeros_like(v) for k, v in theta.items()}
    nu = {k: np.zeros_like(v) for k, v in theta.items()}
    for t, g in enumerate(grads, start=1):
        g = {k: np.asarray(v, np.float64) for k, v in g.items()}
        norm = np.sqrt(sum(np.sum(v ** 2) for v in g.values()))
        scale = min(1.0, clip / norm) if clip > 0 else 1.0
        for k in theta:
            gk = g[k] * scale
            mu[k] = b1 * mu[k] + (1 - b1) * gk
            nu[k] = b2 * nu[k] + (1 - b2) * gk ** 2
            u = (mu[k] / (1 - b1 ** t)) / (np.sqrt(nu[k] / (1 - b2 ** t)) + eps)
            theta[k] = theta[k] - lr * (u + (wd * theta[k] if mask[k] else 0.0))
    return theta


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_adamw_matches_numpy(clip):
    params = pythia.init_params(MODEL, jax.random.key(1))
    rng = np.random.RandomState(0)
    grads = [jax.tree.map(lambda p: rng.randn(*p.shape).astype(np.float32), params) for _ in range(3)]
    cfg = _cfg(peak_lr=0.01, weight_decay=0.1, grad_clip=clip)
    tx = _tx(cfg)
    state, p = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
    ref = numpy_adamw(_flat(params), [_flat(g) for g in grads], 3, 0.01, 0.9, 0.95, 1e-8, 0.1,
                      clip, _flat(decay_mask(params)))
    for k, v in _flat(p).items():
        np.testing.assert_allclose(np.asarray(v), ref[k], rtol=2e-5, atol=2e-7, err_msg=k)


def test_bf16_params_keep_fp32_moments():
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), pythia.init_params(MODEL, jax.random.key(0)))
    state = _tx(_cfg()).init(params)
    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)


def test_trainable_mask_freezes_leaves_and_rows():
    params = pythia.init_params(MODEL, jax.random.key(2))
    rows = np.zeros((MODEL.vocab_size, 1), bool)
    rows[-4:] = True  # only the last 4 embedding rows train (vocabulary expansion)
    trainable = jax.tree.map(lambda _: False, params)
    trainable["embed_in"] = rows
    trainable["final_ln"]["bias"] = True
    tx = _tx(_cfg(peak_lr=0.1, grad_clip=1.0), trainable)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    u = _flat(updates)
    assert np.all(np.asarray(u["embed_in"])[:-4] == 0) and np.all(np.asarray(u["embed_in"])[-4:] != 0)
    assert np.all(np.asarray(u["final_ln/bias"]) != 0)
    for k, v in u.items():
        if k not in ("embed_in", "final_ln/bias"):
            assert not np.any(np.asarray(v)), k
    # clipping sees only trainable gradients: ||g|| = sqrt(4 rows * d + d) ones
    norm = np.sqrt(4 * MODEL.hidden_size + MODEL.hidden_size)
    first = 0.1 * (1.0 / norm) / (np.sqrt((1.0 / norm) ** 2) + 1e-8)  # Adam step 1: lr * sign
    np.testing.assert_allclose(np.asarray(u["final_ln/bias"]), -first, rtol=1e-5)


def test_trainable_mask_shape_errors_are_one_line():
    from cpt_jax.errors import UserError

    params = pythia.init_params(MODEL, jax.random.key(2))
    bad = jax.tree.map(lambda _: True, params)
    bad["embed_in"] = np.ones((3, 1), bool)
    with pytest.raises(UserError, match=r"trainable mask for embed_in has shape \(3, 1\), not broadcastable"):
        _tx(_cfg(), trainable=bad).init(params)
    with pytest.raises(UserError, match="trainable mask does not match the params tree"):
        _tx(_cfg(), trainable={"embed_in": True}).init(params)


def test_path_name_spells_every_key_kind():
    """Dict keys, sequence indices and attribute names, ``/``-joined, as the messages and
    masks name a parameter."""
    import collections

    from cpt_jax import tree_io

    pair = collections.namedtuple("pair", "kernel bias")
    tree = {"layers": {"qkv": pair(kernel=1, bias=2)}, "embed_in": [3, (4,)]}
    names = [tree_io.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert names == ["embed_in/0", "embed_in/1/0", "layers/qkv/kernel", "layers/qkv/bias"]
