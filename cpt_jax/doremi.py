"""DoReMi (Xie et al. 2023): Group-DRO domain weights from a proxy model against a reference.

Per training step of the proxy (k domains, global batch from a fixed mixture), all inside the
jitted step:

1. per-token losses ``l_theta`` (proxy) and ``l_ref`` (frozen reference, stop-gradient), fp32;
2. ``lambda_i = sum_{tok in i} max(l_theta - l_ref, 0) / #{tok in i}``: numerator and
   denominator are sums over the GLOBAL batch (all devices, all micro-batches) before dividing.
   A domain with no token in the batch keeps its previous ``lambda_i`` (``absent="previous"``,
   the official code; 0 before the first observation) or gets ``lambda_i = 0``
   (``absent="zero"``, the paper's formula read literally). Default ``previous``: absence is a
   sampling event that says nothing about the domain's excess loss, while ``0`` would shrink an
   absent domain's weight by ``exp(-eta * lambda)`` of the others for no reason of its own;
   stratified batches (``cpt_jax.data.mixture``) make absence impossible when B >= k anyway;
3. ``alpha' = softmax(log alpha + eta * lambda)``, ``alpha = (1 - c) alpha' + c / k``;
4. the proxy is updated on ``sum_i alpha_i * L_i`` with ``alpha`` held constant, where either
   ``L_i = mean proxy loss of domain i`` (``normalization="domain"``, the paper) or the token
   level weighted mean ``sum_tok a_d l / sum_tok a_d`` with ``a_d = alpha_d / p_d``, ``p`` the
   proxy's sampling mixture (``"token"``, the official code, where ``p`` is uniform);
5. the output is ``alpha_bar = (1/T) sum_{t=1..T} alpha_t``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np

from cpt_jax import checks, losses
from cpt_jax.errors import UserError
from cpt_jax.model import pythia

Normalization = Literal["domain", "token"]  # sum_i alpha_i mean_i (paper) | token-level (official code)
Absent = Literal["previous", "zero"]  # lambda_i of a domain with no token in the batch
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
ABSENT_RULES: tuple[str, ...] = get_args(Absent)
StartPoint = Literal["scratch", "train.init_from"]  # where reference and proxy both start
START_POINTS: tuple[str, ...] = get_args(StartPoint)


def check_section(doremi_cfg: Any, init_from: str) -> None:
    """The ``doremi`` section: the update's eta, c and rules (:func:`check_rules`), the start
    point of reference and proxy, rounds and stage steps; one ``UserError``."""
    check_rules(doremi_cfg.eta, doremi_cfg.c, doremi_cfg.normalization, doremi_cfg.absent)
    checks.choice("doremi.init_from", doremi_cfg.init_from, START_POINTS)
    if doremi_cfg.init_from == "train.init_from" and not init_from:
        raise UserError("doremi.init_from = 'train.init_from' needs train.init_from to be set")
    checks.positive("doremi.rounds", doremi_cfg.rounds)
    for name in ("reference_steps", "proxy_steps", "tolerance"):
        checks.at_least_zero(f"doremi.{name}", doremi_cfg[name])


def check_rules(eta: float, c: float, normalization: str, absent: str) -> None:
    """eta > 0, c in [0, 1], and known normalization and absent-domain rules; one ``UserError``."""
    checks.positive_number("doremi.eta", eta)
    checks.unit_interval("doremi.c", c)
    checks.choice("doremi.normalization", normalization, NORMALIZATIONS)
    checks.choice("doremi.absent", absent, ABSENT_RULES)


# ---------------------------------------------------------------------------------------
# the pure core


def excess_loss_sums(
    proxy_losses: jax.Array,
    ref_losses: jax.Array,
    domain: jax.Array,
    num_domains: int,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-domain ``(sum of max(l_theta - l_ref, 0) [k], token count [k])`` of a batch.

    Clipping is per token, before summing (the paper's and the official code's lambda).
    """
    excess = jnp.maximum(proxy_losses.astype(jnp.float32) - ref_losses.astype(jnp.float32), 0.0)
    return losses.domain_sums(excess, domain, num_domains, mask)


def domain_lambda(
    excess_sums: jax.Array,
    counts: jax.Array,
    previous: jax.Array | None = None,
    absent: Absent = "previous",
) -> jax.Array:
    """``lambda_i = excess_sums_i / counts_i``; a domain with ``counts_i == 0`` gets
    ``previous_i`` (``absent="previous"``) or 0 (``absent="zero"``)."""
    checks.choice("doremi.absent", absent, ABSENT_RULES)
    lam = excess_sums / jnp.maximum(counts, 1.0)
    fill = jnp.zeros_like(lam) if absent == "zero" or previous is None else previous
    return jnp.where(counts > 0, lam, fill)


def update_alpha(alpha: jax.Array, lam: jax.Array, eta: float, c: float) -> jax.Array:
    """One exponentiated-gradient step in log space, then smoothing towards uniform:
    ``alpha' = (1 - c) softmax(log alpha + eta * lambda) + c / k``."""
    k = alpha.shape[-1]
    log_alpha = jnp.log(alpha) + eta * lam
    return (1.0 - c) * jax.nn.softmax(log_alpha, axis=-1) + c / k


def init_state(num_domains: int) -> dict[str, jax.Array]:
    """``alpha_0`` uniform, the running sum of ``alpha_t``, ``t`` = updates done, last lambda."""
    k = num_domains
    return {
        "alpha": jnp.full((k,), 1.0 / k, jnp.float32),
        "alpha_sum": jnp.zeros((k,), jnp.float32),
        "t": jnp.zeros((), jnp.int32),
        "lambda": jnp.zeros((k,), jnp.float32),
    }


def advance(
    state: dict[str, jax.Array],
    excess_sums: jax.Array,
    counts: jax.Array,
    eta: float,
    c: float,
    absent: Absent = "previous",
) -> dict[str, jax.Array]:
    """lambda from global sums, ``alpha_t`` from ``alpha_{t-1}``, running sum and ``t`` + 1."""
    lam = domain_lambda(excess_sums, counts, state["lambda"], absent)
    alpha = update_alpha(state["alpha"], lam, eta, c)
    return {
        "alpha": alpha,
        "alpha_sum": state["alpha_sum"] + alpha,
        "t": state["t"] + 1,
        "lambda": lam,
    }


def average_alpha(state: dict[str, jax.Array]) -> jax.Array:
    """``alpha_bar = (1/T) sum_{t=1..T} alpha_t`` (``alpha_0`` while no update was made)."""
    t = state["t"].astype(jnp.float32)
    return jnp.where(t > 0, state["alpha_sum"] / jnp.maximum(t, 1.0), state["alpha"])


def loss_weights(alpha: jax.Array, counts: jax.Array, normalization: Normalization,
                 sampling: jax.Array | None = None) -> jax.Array:
    """Per-domain factors ``w_i`` such that the objective is ``sum_i w_i * S_i`` with ``S_i``
    the proxy's summed token losses of domain i over the global batch (``counts`` global).

    ``domain`` (paper): ``w_i = alpha_i / N_i`` (0 when ``N_i = 0``), objective
    ``sum_i alpha_i * mean_i``. ``token`` (official code): ``w_i = a_i / sum_j a_j N_j`` with
    ``a_i = alpha_i / p_i``, ``p`` the proxy's sampling weights (uniform when None): domain i
    holds about ``p_i`` of the tokens, so dividing by ``p_i`` makes the token-level mean
    ``sum_tok a_d l / sum_tok a_d`` equal ``sum_i alpha_i * mean_i`` in expectation.
    Linear in ``S``, so each micro-batch's share is ``sum_i w_i * S_i(micro-batch)``.
    """
    if normalization == "domain":
        return jnp.where(counts > 0, alpha / jnp.maximum(counts, 1.0), 0.0)
    if normalization == "token":
        a = alpha if sampling is None else jnp.where(sampling > 0, alpha / sampling, 0.0)
        return a / jnp.maximum(jnp.sum(a * counts), 1e-30)
    checks.choice("doremi.normalization", normalization, NORMALIZATIONS)
    raise AssertionError(normalization)  # unreachable: the check above refused it


def sampling_weights(weights: Any, k: int) -> np.ndarray | None:
    """The proxy's fixed mixture ``p`` as a float32 ``[k]`` summing to 1 (None stays None)."""
    if weights is None:
        return None
    p = np.asarray(weights, np.float64).reshape(-1)
    if p.shape != (k,) or not np.all(p >= 0) or not p.sum() > 0:
        raise UserError(f"DoReMi sampling weights must be {k} non-negative numbers with a "
                        f"positive sum, got {p.tolist()}")
    return (p / p.sum()).astype(np.float32)


# ---------------------------------------------------------------------------------------
# the Objective plugged into the jitted train step


class DoReMiObjective:
    """Group-DRO objective of the DoReMi proxy run (the engine's Objective contract).

    ``extras = {"doremi": {alpha, alpha_sum, t, lambda}, "reference": frozen params}``: the
    reference rides in the train state as a jit argument (a closed-over array would be inlined
    into the program as a constant) and is saved with checkpoints, so a resumed proxy run needs
    nothing else. ``prepare`` runs the proxy (no gradient) and the reference over the whole
    global batch, scanning over ``micro_batches`` slices, and takes one alpha step; ``loss`` is
    a micro-batch's share ``sum_i w_i S_i(micro-batch)`` of the objective (``loss_weights``).
    """

    def __init__(
        self,
        model_config: pythia.PythiaConfig,
        num_domains: int,
        reference_params: Any,
        eta: float = 1.0,
        c: float = 1e-3,
        normalization: Normalization = "domain",
        *,
        absent: Absent = "previous",
        domains: list[str] | None = None,
        micro_batches: int = 1,
        reference_config: pythia.PythiaConfig | None = None,
        vocab_chunk: int = 0,
        reuse_forward: bool = True,
        sampling: Any = None,
    ):
        check_rules(eta, c, normalization, absent)
        if num_domains < 2:
            raise UserError(f"DoReMi needs at least 2 domains, got {num_domains}")
        self.config = model_config
        self.reference_config = reference_config or model_config
        self.k = int(num_domains)
        self.reference_params = reference_params
        self.eta, self.c = float(eta), float(c)
        self.normalization, self.absent = normalization, absent
        self.domains = list(domains) if domains else [str(i) for i in range(self.k)]
        if len(self.domains) != self.k:
            raise UserError(f"{len(self.domains)} domain names for {self.k} domains")
        self.micro_batches = int(micro_batches)
        self.vocab_chunk = int(vocab_chunk)
        self.reuse_forward = bool(reuse_forward)
        self.sampling = sampling_weights(sampling, self.k)  # the proxy mixture (``token``)

    def init_extras(self, params: Any) -> dict:
        """alpha_0 uniform, alpha_sum 0, t 0, lambda 0, and the frozen reference params."""
        del params
        return {"doremi": init_state(self.k), "reference": self.reference_params}

    def _proxy_losses(self, params: Any, tokens: jax.Array) -> jax.Array:
        return losses.next_token_losses(params, tokens, self.config, self.vocab_chunk)

    def _batch_sums(self, lp: jax.Array, reference: Any, tokens: jax.Array, domain: jax.Array):
        """Excess-loss sums, counts, proxy and reference loss sums (each ``[k]``) given the
        proxy's token losses ``lp``."""
        lr = losses.next_token_losses(
            jax.lax.stop_gradient(reference), tokens, self.reference_config, self.vocab_chunk
        )
        excess, counts = excess_loss_sums(lp, lr, domain, self.k)
        proxy_sums, _ = losses.domain_sums(lp, domain, self.k)
        ref_sums, _ = losses.domain_sums(lr, domain, self.k)
        return excess, counts, proxy_sums, ref_sums

    def prepare(self, params: Any, batch: dict, extras: dict) -> tuple[dict, dict, dict]:
        """Global-batch lambda and one alpha step; ctx carries the loss weights ``w``."""
        tokens, domain = batch["tokens"], batch["domain"]
        m, ctx = self.micro_batches, {}
        if m <= 1 and self.reuse_forward:
            # one proxy forward serves lambda and the gradient: its VJP (a pytree holding the
            # residuals) rides in ctx and ``loss`` reuses it instead of a second forward
            lp, ctx["vjp"] = jax.vjp(lambda p: self._proxy_losses(p, tokens), params)
            ctx["lp"] = jax.lax.stop_gradient(lp)
            sums = self._batch_sums(ctx["lp"], extras["reference"], tokens, domain)
        elif m <= 1:
            lp = self._proxy_losses(jax.lax.stop_gradient(params), tokens)
            sums = self._batch_sums(lp, extras["reference"], tokens, domain)
        else:
            b = tokens.shape[0]
            if b % m:
                raise UserError(f"batch of {b} sequences is not divisible into {m} micro-batches")
            # micro-batch j = rows j, j + m, ... (the engine's split: no data movement)
            tok = tokens.reshape(b // m, m, *tokens.shape[1:]).swapaxes(0, 1)
            dom = domain.reshape(b // m, m).swapaxes(0, 1)

            def body(acc, xs):
                lp = self._proxy_losses(jax.lax.stop_gradient(params), xs[0])
                part = self._batch_sums(lp, extras["reference"], *xs)
                return jax.tree.map(jnp.add, acc, part), None

            zero = tuple(jnp.zeros((self.k,), jnp.float32) for _ in range(4))
            sums, _ = jax.lax.scan(body, zero, (tok, dom))
        excess, counts, proxy_sums, ref_sums = sums
        state = advance(extras["doremi"], excess, counts, self.eta, self.c, self.absent)
        w = loss_weights(state["alpha"], counts, self.normalization, self.sampling)
        new_extras = {"doremi": state, "reference": extras["reference"]}
        metrics = {}
        denom = jnp.maximum(counts, 1.0)
        alpha_bar = average_alpha(state)
        for i, name in enumerate(self.domains):
            metrics[f"doremi/alpha/{name}"] = state["alpha"][i]
            metrics[f"doremi/alpha_avg/{name}"] = alpha_bar[i]
            metrics[f"doremi/lambda/{name}"] = state["lambda"][i]
            metrics[f"doremi/ref/{name}/loss"] = ref_sums[i] / denom[i]
            metrics[f"doremi/proxy/{name}/loss"] = proxy_sums[i] / denom[i]
        ctx["w"] = w
        return ctx, new_extras, metrics

    def loss(self, params: Any, micro_batch: dict, ctx: dict) -> tuple[jax.Array, dict]:
        """``sum_i w_i * S_i`` over this micro-batch (alpha constant); aux: per-domain sums."""
        tokens = micro_batch["tokens"]
        if "vjp" in ctx:
            if ctx["lp"].shape != (tokens.shape[0], tokens.shape[1] - 1):
                raise UserError("DoReMi with micro_batches=1 got a micro-batch that is not the whole batch")
            tl = _reuse_forward(params, ctx["lp"], ctx["vjp"])
        else:
            tl = self._proxy_losses(params, tokens)
        sums, counts = losses.domain_sums(tl, micro_batch["domain"], self.k)
        loss = jnp.sum(jax.lax.stop_gradient(ctx["w"]) * sums)
        return loss, {"domain_loss_sum": sums, "domain_tokens": counts}


def _reuse_forward(params: Any, lp: jax.Array, vjp: Any) -> jax.Array:
    """``lp`` (the token losses ``prepare`` computed at these same params) with the gradient
    of that forward's VJP: the backward pass without a second forward."""

    @jax.custom_vjp
    def reuse(p: Any) -> jax.Array:
        return lp

    def fwd(p: Any) -> tuple[jax.Array, None]:
        return lp, None

    def bwd(_: None, g: jax.Array) -> tuple[Any]:
        return vjp(g)

    reuse.defvjp(fwd, bwd)
    return reuse(params)


def weights_json(state: dict, domains: list[str]) -> dict[str, dict[str, float]]:
    """``{"average": {domain: alpha_bar_i}, "final": {domain: alpha_T_i}}`` (what
    ``RUN_DIR/domain_weights.json`` holds and ``data.weights`` accepts)."""
    avg = [float(x) for x in jax.device_get(average_alpha(state))]
    fin = [float(x) for x in jax.device_get(state["alpha"])]
    return {"average": dict(zip(domains, avg)), "final": dict(zip(domains, fin))}
