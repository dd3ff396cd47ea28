"""Cross-entropy against numpy, the chunked loss against the plain one, per-domain sums."""

import jax
import jax.numpy as jnp
import numpy as np

from cpt_jax import losses
from cpt_jax.model import pythia

jax.config.update("jax_default_matmul_precision", "highest")
CFG = pythia.PythiaConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=2)


def test_cross_entropy_matches_numpy():
    rng = np.random.RandomState(0)
    logits, targets = rng.randn(3, 5, 11).astype(np.float32), rng.randint(0, 11, (3, 5))
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(losses.cross_entropy(logits, targets), expected, rtol=1e-5)


def test_chunked_loss_and_gradient_equal_the_plain_loss():
    params = pythia.init_params(CFG, jax.random.key(0))
    tokens = np.random.RandomState(1).randint(0, 61, (2, 23))

    def mean_loss(p, chunk):
        return losses.next_token_losses(p, tokens, CFG, vocab_chunk=chunk).mean()

    v0, g0 = jax.value_and_grad(mean_loss)(params, 0)
    v1, g1 = jax.value_and_grad(mean_loss)(params, 5)
    np.testing.assert_allclose(v0, v1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_domain_sums_match_a_python_loop():
    rng = np.random.RandomState(2)
    tl, dom = rng.rand(6, 4).astype(np.float32), np.array([0, 2, 2, 1, 0, 2])
    sums, counts = losses.domain_sums(jnp.asarray(tl), jnp.asarray(dom), 4)
    for k in range(4):
        np.testing.assert_allclose(sums[k], tl[dom == k].sum(), rtol=1e-6)
        assert counts[k] == 4 * (dom == k).sum()
