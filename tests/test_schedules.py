"""Every schedule against its formula written step by step in plain Python (float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax import config as config_lib
from cpt_jax import configure
from cpt_jax import schedules
from cpt_jax.errors import UserError

PEAK = 3e-4


def cfg(steps=200, **schedule):
    c = config_lib.defaults()
    c.train.steps = steps
    c.optim.peak_lr = PEAK
    for k, v in schedule.items():
        c.schedule[k] = v
    configure.validate(c)
    return c


def values(c, steps):
    s = schedules.make_schedule(c.schedule, c.optim.peak_lr, c.train.steps)
    return np.asarray(s(jnp.asarray(steps)), np.float64)


# --- the formulas, one step at a time -------------------------------------------------


def ref_warmup(t, W, eta0, eta_max):
    return eta0 + (eta_max - eta0) * t / W


def ref_cosine(t, T, W, eta_max, eta_min, eta0):
    if t < W:
        return ref_warmup(t, W, eta0, eta_max)
    t = min(t, T)
    return eta_min + 0.5 * (eta_max - eta_min) * (1 + math.cos(math.pi * (t - W) / (T - W)))


def ref_wsd(t, T, W, D, eta_max, eta_min, eta0, shape):
    if t < W:
        return ref_warmup(t, W, eta0, eta_max)
    if t < T - D:
        return eta_max
    x = min((t - (T - D)) / D, 1.0)
    if shape == "linear":
        return eta_max - (eta_max - eta_min) * x
    if shape == "sqrt":  # eta_max * (1 - sqrt(x)) rescaled to end at eta_min
        return eta_min + (eta_max - eta_min) * (1 - math.sqrt(x))
    return eta_max * math.exp(x * math.log(eta_min / eta_max))


def ref_infinite(t, T, W, C, A, eta_max, eta_const, eta_min, eta0, shape, a):
    if t < W:
        return ref_warmup(t, W, eta0, eta_max)
    if t < W + C:
        x = (t - W) / C
        if shape == "cosine":
            return eta_const + 0.5 * (eta_max - eta_const) * (1 + math.cos(math.pi * x))
        h = lambda v: 1 / math.sqrt(1 + a * v) - 1  # noqa: E731
        return eta_max + (eta_const - eta_max) * h(x) / h(1)
    T_ann = T - A
    if A == 0 or t < T_ann:
        return eta_const
    return eta_const * (eta_min / eta_const) ** ((min(t, T) - T_ann) / A)


def check(got, want):
    np.testing.assert_allclose(got, np.asarray(want), rtol=2e-5, atol=PEAK * 1e-6)


STEPS = np.arange(0, 206)  # 0 ... T-1, T and a few steps past the end (T = 200)


# --- single schedules ------------------------------------------------------------------


@pytest.mark.parametrize("warmup, W", [({"warmup_frac": 0.05}, 10), ({"warmup_steps": 7}, 7),
                                       ({"warmup_steps": 0}, 0), ({"warmup_frac": 0.0}, 0)])
@pytest.mark.parametrize("start_lr", [0.0, 0.1 * PEAK])
def test_cosine_matches_formula(warmup, W, start_lr):
    c = cfg(start_lr=start_lr, min_lr_ratio=0.1, **warmup)
    want = [ref_cosine(t, 200, W, PEAK, 0.1 * PEAK, start_lr) for t in STEPS]
    got = values(c, STEPS)
    check(got, want)
    assert got[0] == pytest.approx(start_lr if W else PEAK, rel=1e-6)  # W = 0: eta_max at once
    assert got[W] == pytest.approx(PEAK, rel=1e-6)
    assert got[200] == pytest.approx(0.1 * PEAK, rel=1e-5) and got[205] == got[200]


def test_pythia_cosine_equals_optax_warmup_cosine():
    # optax's decay_steps includes the warmup (optax.warmup_cosine_decay_schedule)
    c = cfg(steps=1000, warmup_frac=0.01, min_lr_ratio=0.1)
    ref = jax.vmap(__import__("optax").warmup_cosine_decay_schedule(0.0, PEAK, 10, 1000, 0.1 * PEAK))
    steps = np.arange(0, 1001, 7)
    check(values(c, steps), np.asarray(ref(jnp.asarray(steps))))


def test_constant_ignores_warmup():
    c = cfg(name="constant", warmup_frac=0.1, start_lr=1e-6)
    check(values(c, STEPS), np.full(len(STEPS), PEAK))


@pytest.mark.parametrize("shape", ["linear", "sqrt", "exp"])
@pytest.mark.parametrize("W", [0, 12])
def test_wsd_matches_formula(shape, W):
    c = cfg(name="wsd", warmup_steps=W, decay_frac=0.15, decay_shape=shape, min_lr_ratio=0.05,
            start_lr=2e-5)
    want = [ref_wsd(t, 200, W, 30, PEAK, 0.05 * PEAK, 2e-5, shape) for t in STEPS]
    check(values(c, STEPS), want)


def test_wsd_sqrt_to_zero_is_hagele_form():
    c = cfg(name="wsd", warmup_steps=0, decay_frac=0.5, decay_shape="sqrt", min_lr_ratio=0.0)
    x = np.clip((STEPS - 100) / 100, 0, 1)
    check(values(c, STEPS), PEAK * (1 - np.sqrt(x)))


@pytest.mark.parametrize("shape", ["cosine", "inv_sqrt"])
@pytest.mark.parametrize("anneal", [0.0, 0.25])
def test_infinite_matches_formula(shape, anneal):
    c = cfg(name="infinite", warmup_steps=10, cooldown_frac=0.3, cooldown_shape=shape,
            const_lr_ratio=0.4, anneal_frac=anneal, min_lr_ratio=0.02, inv_sqrt_alpha=7.0,
            start_lr=1e-5)
    A = int(anneal * 200)
    want = [ref_infinite(t, 200, 10, 60, A, PEAK, 0.4 * PEAK, 0.02 * PEAK, 1e-5, shape, 7.0)
            for t in STEPS]
    got = values(c, STEPS)
    check(got, want)
    assert got[70] == pytest.approx(0.4 * PEAK, rel=1e-5)  # end of cooldown: eta_const
    assert got[200] == pytest.approx((0.02 if A else 0.4) * PEAK, rel=1e-5)


def test_infinite_without_rewarm_starts_at_eta_const():
    c = cfg(name="infinite", rewarm=False, warmup_frac=0.1, cooldown_frac=0.3, anneal_frac=0.1,
            const_lr_ratio=0.5, min_lr_ratio=0.1)
    want = [ref_infinite(t, 200, 0, 0, 20, PEAK, 0.5 * PEAK, 0.1 * PEAK, 0.0, "cosine", 1.0)
            for t in STEPS]
    got = values(c, STEPS)
    check(got, want)
    assert got[0] == pytest.approx(0.5 * PEAK, rel=1e-6)


# --- chained phases ---------------------------------------------------------------------


def test_phases_chain_with_their_own_settings():
    text = ("cosine:100,warmup_steps=10,min_lr_ratio=0.1;"
            "cosine:*,warmup_frac=0.1,start_lr=3e-5,peak_lr=6e-4,min_lr_ratio=0.0;"
            "constant:20,peak_lr=1e-5")
    c = cfg(steps=300, phases=text)
    steps = np.arange(0, 306)

    def ref(t):
        if t < 100:
            return ref_cosine(t, 100, 10, PEAK, 0.1 * PEAK, 0.0)
        if t < 280:
            return ref_cosine(t - 100, 180, 18, 6e-4, 0.0, 3e-5)
        return 1e-5

    got = values(c, steps)
    check(got, [ref(t) for t in steps])
    assert got[99] > 0.1 * PEAK and got[100] == pytest.approx(3e-5, rel=1e-6)  # re-warm boundary
    assert schedules.describe(c.schedule, PEAK, 300) == "cosine:100 -> cosine:180 -> constant:20"


def test_infinite_across_tasks_continues_at_eta_const():
    text = ("infinite:100,warmup_steps=5,cooldown_frac=0.4;infinite:100,rewarm=false;"
            "infinite:100,rewarm=false,anneal_frac=0.3")
    c = cfg(steps=300, phases=text, const_lr_ratio=0.5, min_lr_ratio=0.1)
    steps = np.arange(0, 303)

    def ref(t):
        args = (PEAK, 0.5 * PEAK, 0.1 * PEAK, 0.0, "cosine", 10.0)
        if t < 100:
            return ref_infinite(t, 100, 5, 40, 0, *args)
        if t < 200:
            return ref_infinite(t - 100, 100, 0, 0, 0, *args)
        return ref_infinite(t - 200, 100, 0, 0, 30, *args)

    got = values(c, steps)
    check(got, [ref(t) for t in steps])
    np.testing.assert_allclose(got[45:270], 0.5 * PEAK, rtol=1e-6)  # no re-warm at 100 or 200


def test_chain_builder_is_jittable_and_matches_eager():
    s = schedules.chain([(schedules.warmup_cosine(1e-3, 50, 5, 1e-4, 1e-4), 50),
                         (schedules.constant(2e-4), 30),
                         (schedules.wsd(1e-3, 40, 0, 10, 1e-4, shape="exp"), 40)])
    jitted = jax.jit(s)
    for t in (0, 4, 5, 49, 50, 79, 80, 109, 110, 119, 120, 500):
        assert float(jitted(jnp.int32(t))) == pytest.approx(float(s(t)), rel=1e-6)
    assert float(s(50)) == pytest.approx(2e-4) and float(s(80)) == pytest.approx(1e-3)
    assert float(s(49)) == pytest.approx(ref_cosine(49, 50, 5, 1e-3, 1e-4, 1e-4), rel=1e-5)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule, match", [
    ({"phases": "cosine:100;cosine:50"}, "add up to 150 steps"),
    ({"phases": "cosine:*;constant:*"}, "at most one phase"),
    ({"phases": "cosine:250;constant:*"}, "leaving none"),
    ({"phases": "linear:200"}, "'linear' is not one of"),
    ({"phases": "cosine"}, "expected NAME:STEPS"),
    ({"phases": "cosine:200,warmup=3"}, "'warmup=3' is not KEY=VALUE"),
    ({"phases": "cosine:200,warmup_steps=x"}, "expects int"),
    ({"phases": "cosine:100;cosine:100,rewarm=false"}, "infinite schedule only"),
    ({"warmup_steps": 200}, "must be shorter than the phase"),
    ({"name": "wsd", "decay_shape": "exp", "min_lr_ratio": 0.0}, "needs eta_min > 0"),
    ({"name": "wsd", "warmup_frac": 0.6, "decay_frac": 0.5}, "exceed the phase"),
    ({"name": "infinite", "anneal_frac": 0.1, "min_lr_ratio": 0.0}, "needs eta_min > 0"),
    ({"name": "infinite", "const_lr_ratio": 0.0}, "const_lr_ratio must be in"),
    ({"name": "infinite", "anneal_frac": 0.1, "const_lr_ratio": 0.1, "min_lr_ratio": 0.2},
     "eta_min <= eta_const"),
    ({"start_lr": -1.0}, "start_lr must be >= 0"),
])
def test_bad_schedules_raise_user_error(schedule, match):
    with pytest.raises(UserError, match=match):
        cfg(**schedule)


def test_phases_override_from_the_command_line():
    c = config_lib.defaults()
    config_lib.apply_overrides(c, ["--config.train.steps=30",
                                   "--config.schedule.phases=constant:10;cosine:*,warmup_steps=0"])
    configure.validate(c)
    phases = schedules.resolve_phases(c.schedule, c.optim.peak_lr, c.train.steps)
    assert [(p.name, p.steps, p.warmup) for p in phases] == [("constant", 10, 0), ("cosine", 20, 0)]


def test_schedule_command_plots_and_prints_the_formula_values(tmp_path, capsys):
    from cpt_jax import cli

    out = tmp_path / "lr.png"
    code = cli.main(["schedule", "--config", "configs/tiny.py", "--out", str(out),
                     "--config.train.steps=400", "--config.optim.peak_lr=3e-4",
                     "--config.schedule.warmup_steps=20", "--config.schedule.start_lr=3e-5"])
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = {int(l.split()[1]): float(l.split()[3]) for l in capsys.readouterr().out.splitlines()
             if l.strip().startswith("step")}
    for t in (0, 20, 399, 400):
        assert lines[t] == pytest.approx(ref_cosine(t, 400, 20, PEAK, 0.1 * PEAK, 3e-5), rel=1e-4)


def test_anneal_before_the_last_phase_is_refused_in_one_line():
    """The anneal is a branch (Ibrahim et al. 2024): a phase after it would jump from eta_min
    back to eta_const (x eta_const/eta_min) with no warmup."""
    text = "infinite:100,warmup_steps=5,anneal_frac=0.2;infinite:100,rewarm=false"
    with pytest.raises(UserError) as info:
        cfg(steps=200, phases=text, min_lr_ratio=0.1)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("schedule.phases: phase 1 'infinite:100' anneals "
                                              "but phase 2 follows it")
    # an anneal inherited from the section counts too; zeroing it on the early phase is accepted
    with pytest.raises(UserError, match="phase 1 'infinite:100' anneals"):
        cfg(steps=200, phases="infinite:100;infinite:100,rewarm=false", anneal_frac=0.1)
    c = cfg(steps=200, phases="infinite:100,anneal_frac=0;infinite:100,rewarm=false",
            anneal_frac=0.1)
    got = values(c, np.arange(200))
    # the last phase anneals over its final A = 10 steps: eta_const (eta_min/eta_const)^(9/10)
    assert got[150] == pytest.approx(0.5 * PEAK, rel=1e-6)
    assert got[199] == pytest.approx(0.5 * PEAK * (0.1 / 0.5) ** 0.9, rel=1e-5)
    # a cosine re-warm after a cosine decay is an ordinary chain, not an anneal
    cfg(steps=200, phases="cosine:100;cosine:100")
