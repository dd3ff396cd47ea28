"""DoReMi's formulas against a numpy implementation: clipping, lambda, alpha step, averaging,
both objective normalisations, and the objective's prepare/loss on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax import doremi, losses
from cpt_jax.errors import UserError
from cpt_jax.model import pythia

jax.config.update("jax_default_matmul_precision", "highest")
CFG = pythia.PythiaConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=2)


def np_step(alpha, lam_prev, lp, lr, dom, k, eta, c, absent="previous"):
    """One DoReMi update written out in numpy with loops (the paper's step 2-3)."""
    lam = np.zeros(k)
    for i in range(k):
        rows = dom == i
        tok = np.maximum(lp[rows] - lr[rows], 0.0).ravel()
        if tok.size:
            lam[i] = tok.sum() / tok.size
        else:
            lam[i] = lam_prev[i] if absent == "previous" else 0.0
    a = alpha * np.exp(eta * lam)
    a = a / a.sum()
    return lam, (1 - c) * a + c / k


def test_one_update_matches_numpy_with_clipping_and_an_absent_domain():
    rng = np.random.RandomState(0)
    k, eta, c = 4, 1.0, 1e-3
    lp = rng.rand(6, 5).astype(np.float32) * 3
    lr = lp + rng.randn(6, 5).astype(np.float32)  # about half the excesses are negative
    dom = np.array([0, 2, 2, 1, 0, 2])  # domain 3 absent
    assert ((lp - lr) < 0).any() and ((lp - lr) > 0).any()
    alpha = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    lam_prev = np.array([0.5, 0.6, 0.7, 0.8], np.float32)
    for absent in ("previous", "zero"):
        state = {"alpha": jnp.asarray(alpha), "alpha_sum": jnp.zeros(k), "t": jnp.array(0),
                 "lambda": jnp.asarray(lam_prev)}
        sums, counts = doremi.excess_loss_sums(jnp.asarray(lp), jnp.asarray(lr), jnp.asarray(dom), k)
        new = jax.jit(doremi.advance, static_argnums=(3, 4, 5))(state, sums, counts, eta, c, absent)
        lam_np, alpha_np = np_step(alpha, lam_prev, lp, lr, dom, k, eta, c, absent)
        np.testing.assert_allclose(new["lambda"], lam_np, rtol=1e-6)
        np.testing.assert_allclose(new["alpha"], alpha_np, rtol=1e-6)
        assert abs(float(new["alpha"].sum()) - 1) < 1e-6 and int(new["t"]) == 1
    assert lam_np[3] == 0.0  # absent="zero"


def test_running_average_is_the_mean_of_alpha_1_to_T():
    rng = np.random.RandomState(1)
    k, eta, c = 3, 0.5, 0.05
    state = doremi.init_state(k)
    alpha, lam_prev, seen = np.full(k, 1 / k), np.zeros(k), []
    step = jax.jit(doremi.advance, static_argnums=(3, 4))
    for _ in range(5):
        lp, lr = rng.rand(4, 3) * 2, rng.rand(4, 3) * 2
        dom = rng.randint(0, k, 4)
        s, n = doremi.excess_loss_sums(jnp.asarray(lp), jnp.asarray(lr), jnp.asarray(dom), k)
        state = step(state, s, n, eta, c)
        lam_prev, alpha = np_step(alpha, lam_prev, lp, lr, dom, k, eta, c)
        seen.append(alpha)
    np.testing.assert_allclose(state["alpha"], alpha, rtol=1e-5)
    np.testing.assert_allclose(doremi.average_alpha(state), np.mean(seen, 0), rtol=1e-5)
    np.testing.assert_allclose(doremi.average_alpha(doremi.init_state(k)), np.full(k, 1 / k))
    out = doremi.weights_json(state, ["a", "b", "c"])
    np.testing.assert_allclose(list(out["average"].values()), np.mean(seen, 0), rtol=1e-5)
    np.testing.assert_allclose(list(out["final"].values()), alpha, rtol=1e-5)
    assert list(out["final"]) == ["a", "b", "c"]


def test_smoothing_floor_and_log_space_stability():
    # a huge excess on one domain: exp would overflow outside log space; the others sit at c/k
    alpha = doremi.update_alpha(jnp.full((3,), 1 / 3), jnp.array([1000.0, 0.0, 0.0]), 1.0, 1e-3)
    np.testing.assert_allclose(alpha, [1 - 2e-3 / 3, 1e-3 / 3, 1e-3 / 3], rtol=1e-6)


def test_both_normalisations_and_micro_batch_additivity():
    rng = np.random.RandomState(2)
    k = 3
    tl = rng.rand(8, 4)
    dom = np.array([0, 1, 1, 2, 0, 0, 1, 1])
    alpha = np.array([0.2, 0.5, 0.3])
    sums, counts = losses.domain_sums(jnp.asarray(tl), jnp.asarray(dom), k)
    paper = sum(alpha[i] * tl[dom == i].mean() for i in range(k))
    official = (alpha[dom][:, None] * tl).sum() / (alpha[dom][:, None] * np.ones_like(tl)).sum()
    for norm, expected in (("domain", paper), ("token", official)):
        w = doremi.loss_weights(jnp.asarray(alpha), counts, norm)
        # micro-batches of 2 rows, each normalised with the global counts, sum to the objective
        parts = [jnp.sum(w * losses.domain_sums(jnp.asarray(tl[j:j + 2]), jnp.asarray(dom[j:j + 2]), k)[0])
                 for j in range(0, 8, 2)]
        np.testing.assert_allclose(float(sum(parts)), expected, rtol=1e-6)
    assert abs(paper - official) > 1e-3  # they are different objectives
    with pytest.raises(UserError, match="normalization"):
        doremi.loss_weights(jnp.asarray(alpha), counts, "mean")


def _tiny(seed):
    return pythia.init_params(CFG, jax.random.key(seed))


def test_objective_prepare_and_loss_match_numpy_on_a_tiny_model():
    k = 3
    proxy, ref = _tiny(0), _tiny(1)
    rng = np.random.RandomState(3)
    batch = {"tokens": jnp.asarray(rng.randint(0, 61, (4, 9)), jnp.int32),
             "domain": jnp.asarray([2, 0, 2, 0], jnp.int32)}  # domain 1 absent: keeps lambda 0
    lp = np.asarray(losses.next_token_losses(proxy, batch["tokens"], CFG))
    lr = np.asarray(losses.next_token_losses(ref, batch["tokens"], CFG))
    dom = np.asarray(batch["domain"])
    lam_np, alpha_np = np_step(np.full(k, 1 / k), np.zeros(k), lp, lr, dom, k, 1.0, 1e-3)
    paper = sum(alpha_np[i] * lp[dom == i].mean() for i in (0, 2))

    def paper_objective(p):  # the paper's step 4 written directly, alpha a constant
        tl = losses.next_token_losses(p, batch["tokens"], CFG)
        return sum(alpha_np[i] * tl[dom == i].mean() for i in (0, 2))

    grad_ref = jax.grad(paper_objective)(proxy)
    results = []
    for m in (1, 2):
        obj = doremi.DoReMiObjective(CFG, k, ref, 1.0, 1e-3, "domain", micro_batches=m,
                                     domains=["a", "b", "c"])
        extras = obj.init_extras(proxy)
        ctx, new, metrics = jax.jit(obj.prepare)(proxy, batch, extras)
        np.testing.assert_allclose(new["doremi"]["lambda"], lam_np, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(new["doremi"]["alpha"], alpha_np, rtol=1e-5)
        np.testing.assert_allclose(metrics["doremi/ref/c/loss"], lr[dom == 2].mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics["doremi/alpha/b"], alpha_np[1], rtol=1e-5)
        assert ("vjp" in ctx) == (m == 1)  # m = 1 reuses prepare's forward for the gradient

        @jax.jit
        def grad_of_loss(p, ctx):
            micro = jax.tree.map(lambda a: a.reshape(m, -1, *a.shape[1:]), batch)
            parts = [jax.value_and_grad(obj.loss, has_aux=True)(p, jax.tree.map(lambda a: a[j], micro), ctx)
                     for j in range(m)]
            return sum(v for (v, _), _ in parts), jax.tree.map(lambda *g: sum(g), *[g for _, g in parts])

        value, grad = grad_of_loss(proxy, ctx)
        np.testing.assert_allclose(float(value), paper, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
        results.append(new["doremi"]["alpha"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(UserError, match="absent"):
        doremi.DoReMiObjective(CFG, 3, {}, absent="stale")
    with pytest.raises(UserError, match="at least 2"):
        doremi.DoReMiObjective(CFG, 1, {})


def test_token_normalisation_divides_by_the_sampling_weights():
    """With a non-uniform proxy mixture p, the token-level objective weights each token by
    alpha_d / p_d: numpy's sum_tok (alpha_d/p_d) l / sum_tok (alpha_d/p_d). When the batch holds
    exactly p_i of its tokens from domain i it equals the paper's sum_i alpha_i mean_i."""
    rng = np.random.RandomState(5)
    k, p = 3, np.array([0.6, 0.3, 0.1])
    dom = np.repeat(np.arange(k), (p * 20).astype(int))  # 12, 6, 2 rows: counts exactly p
    tl = rng.rand(len(dom), 7) + dom[:, None]  # domains differ in loss level
    alpha = np.array([0.2, 0.3, 0.5])
    sums, counts = losses.domain_sums(jnp.asarray(tl), jnp.asarray(dom), k)
    a = (alpha / p)[dom][:, None] * np.ones_like(tl)
    token = (a * tl).sum() / a.sum()
    paper = sum(alpha[i] * tl[dom == i].mean() for i in range(k))
    w = doremi.loss_weights(jnp.asarray(alpha), counts, "token",
                            doremi.sampling_weights(p * 4, k))  # the scale of p cancels
    np.testing.assert_allclose(float(jnp.sum(w * sums)), token, rtol=1e-6)
    np.testing.assert_allclose(token, paper, rtol=1e-12)
    unweighted = (alpha[dom][:, None] * tl).sum() / (alpha[dom][:, None] * np.ones_like(tl)).sum()
    assert abs(unweighted - paper) > 0.3  # without dividing by p the mixture skews the objective
    # uniform p changes nothing; a domain never sampled (p_i = 0, no tokens) gets weight 0
    np.testing.assert_allclose(
        doremi.loss_weights(jnp.asarray(alpha), counts, "token", doremi.sampling_weights([1, 1, 1], k)),
        doremi.loss_weights(jnp.asarray(alpha), counts, "token"), rtol=1e-6)
    w0 = doremi.loss_weights(jnp.asarray(alpha), jnp.asarray([12.0, 8.0, 0.0]), "token",
                             doremi.sampling_weights([0.6, 0.4, 0.0], k))
    assert np.all(np.isfinite(w0)) and float(w0[2]) == 0.0
    with pytest.raises(UserError, match="sampling weights must be 3"):
        doremi.sampling_weights([0.5, -0.1, 0.6], k)
