"""Learning-rate schedules (optax schedules: jittable callables step -> lr).

Symbols (docs/schedules.md): t step within a phase, T phase steps, W warmup steps, eta_0 the
warmup's start value, eta_max peak, eta_min floor, eta_const the infinite schedule's plateau.
Every schedule reaches its final value at t = T (one past a phase's last update, as optax's
``decay_steps``) and holds it for t > T. Phases chain with ``chain``; ``make_schedule`` builds
one schedule (or a chain, from ``schedule.phases``) out of the config's ``schedule`` section.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Literal, Sequence, get_args

import jax.numpy as jnp
import optax

from cpt_jax.errors import UserError

ScheduleName = Literal["cosine", "constant", "wsd", "infinite"]
DecayShape = Literal["linear", "sqrt", "exp"]  # WSD's decay
CooldownShape = Literal["cosine", "inv_sqrt"]  # the infinite schedule's cooldown
NAMES: tuple[str, ...] = get_args(ScheduleName)
DECAY_SHAPES: tuple[str, ...] = get_args(DecayShape)
COOLDOWN_SHAPES: tuple[str, ...] = get_args(CooldownShape)


def _t(step: Any) -> jnp.ndarray:
    return jnp.asarray(step, jnp.float32)


def _frac(t: jnp.ndarray, start: float, length: int) -> jnp.ndarray:
    """(t - start) / length clipped to [0, 1]; a zero length gives 1 (the piece is skipped)."""
    return jnp.clip((t - start) / max(length, 1), 0.0, 1.0)


def _warmup(t: jnp.ndarray, after: jnp.ndarray, W: int, eta_0: float, eta_max: float) -> jnp.ndarray:
    """``eta_0 + (eta_max - eta_0) * t/W`` for t < W, else ``after``; W = 0 means no warmup."""
    if W == 0:
        return after
    return jnp.where(t < W, eta_0 + (eta_max - eta_0) * _frac(t, 0, W), after)


def warmup_cosine(eta_max: float, T: int, W: int = 0, eta_min: float = 0.0,
                  eta_0: float = 0.0) -> optax.Schedule:
    """Pythia / Gupta et al. (re-)warm: ``t < W: eta_0 + (eta_max - eta_0) t/W``, then
    ``eta_min + (eta_max - eta_min)/2 * (1 + cos(pi (t - W)/(T - W)))``; eta_min for t >= T."""
    _need(0 <= W < T, f"cosine warmup W={W} must be shorter than the phase T={T}")

    def schedule(step: Any) -> jnp.ndarray:
        t = _t(step)
        x = _frac(t, W, T - W)
        cos = eta_min + 0.5 * (eta_max - eta_min) * (1.0 + jnp.cos(jnp.pi * x))
        return _warmup(t, cos, W, eta_0, eta_max)

    return schedule


def constant(eta_const: float) -> optax.Schedule:
    """``eta_const`` at every step (Gupta et al.'s "no re-warm" baseline: Pythia's final LR)."""

    def schedule(step: Any) -> jnp.ndarray:
        return jnp.full(jnp.shape(step), eta_const, jnp.float32)

    return schedule


def decay_curve(x: jnp.ndarray, eta_max: float, eta_min: float, shape: str) -> jnp.ndarray:
    """WSD decay from eta_max (x = 0) to eta_min (x = 1): ``linear`` eta_max - (eta_max - eta_min) x;
    ``sqrt`` eta_min + (eta_max - eta_min)(1 - sqrt(x)) (Hägele et al.'s eta_max (1 - sqrt(x))
    when eta_min = 0); ``exp`` eta_max (eta_min/eta_max)**x (needs eta_min > 0)."""
    if shape == "linear":
        return eta_max - (eta_max - eta_min) * x
    if shape == "sqrt":
        return eta_min + (eta_max - eta_min) * (1.0 - jnp.sqrt(x))
    if shape == "exp":
        return eta_max * (eta_min / eta_max) ** x
    raise UserError(f"decay shape '{shape}' is not one of {', '.join(DECAY_SHAPES)}")


def wsd(eta_max: float, T: int, W: int = 0, decay_steps: int = 0, eta_min: float = 0.0,
        eta_0: float = 0.0, shape: str = "linear") -> optax.Schedule:
    """Warmup-stable-decay (MiniCPM): warmup over W, eta_max until T - D, then ``decay_curve``
    with x = (t - (T - D))/D over the last D = ``decay_steps`` steps; eta_min for t >= T."""
    D = decay_steps
    _need(W >= 0 and D >= 0 and W + D <= T, f"wsd warmup W={W} + decay D={D} exceed the phase T={T}")
    _need(shape != "exp" or eta_min > 0, "wsd exp decay needs eta_min > 0 (schedule.min_lr_ratio)")
    _need(shape in DECAY_SHAPES, f"decay shape '{shape}' is not one of {', '.join(DECAY_SHAPES)}")

    def schedule(step: Any) -> jnp.ndarray:
        t = _t(step)
        if D == 0:
            body = jnp.full(t.shape, eta_max, jnp.float32)
        else:
            body = jnp.where(t < T - D, eta_max, decay_curve(_frac(t, T - D, D), eta_max, eta_min, shape))
        return _warmup(t, body, W, eta_0, eta_max)

    return schedule


def inv_sqrt_cooldown(x: jnp.ndarray, eta_max: float, eta_const: float, a: float) -> jnp.ndarray:
    """Ibrahim et al.: ``eta_max + (eta_const - eta_max) h(x)/h(1)``, ``h(x) = 1/sqrt(1 + a x) - 1``."""
    h = lambda v: 1.0 / jnp.sqrt(1.0 + a * v) - 1.0  # noqa: E731
    return eta_max + (eta_const - eta_max) * h(x) / h(1.0)


def infinite(eta_max: float, eta_const: float, T: int, W: int = 0, cooldown_steps: int = 0,
             anneal_steps: int = 0, eta_min: float = 0.0, eta_0: float = 0.0,
             shape: str = "cosine", a: float = 10.0) -> optax.Schedule:
    """Infinite schedule (Ibrahim et al. 2024): warmup over W; cooldown eta_max -> eta_const over
    C = ``cooldown_steps`` with x = (t - W)/C (``cosine``: eta_const + (eta_max - eta_const)/2
    (1 + cos(pi x)); ``inv_sqrt``: ``inv_sqrt_cooldown``); eta_const; then, over the last
    A = ``anneal_steps``, ``eta_const (eta_min/eta_const)**((t - T_ann)/A)`` with T_ann = T - A.
    W = C = 0 starts at eta_const: a later task continuing without re-warm."""
    C, A = cooldown_steps, anneal_steps
    _need(min(W, C, A) >= 0 and W + C + A <= T,
          f"infinite warmup W={W} + cooldown C={C} + anneal A={A} exceed the phase T={T}")
    _need(A == 0 or eta_min > 0, "infinite anneal needs eta_min > 0 (schedule.min_lr_ratio)")
    _need(A == 0 or eta_min <= eta_const,
          f"infinite anneal goes down: needs eta_min <= eta_const, got {eta_min:g} > {eta_const:g}")
    _need(shape in COOLDOWN_SHAPES, f"cooldown shape '{shape}' is not one of {', '.join(COOLDOWN_SHAPES)}")
    _need(shape != "inv_sqrt" or a > 0, f"inverse-sqrt cooldown needs a > 0, got {a}")
    T_ann = T - A

    def schedule(step: Any) -> jnp.ndarray:
        t = _t(step)
        body = jnp.full(t.shape, eta_const, jnp.float32)
        if A:
            anneal = eta_const * (eta_min / eta_const) ** _frac(t, T_ann, A)
            body = jnp.where(t < T_ann, body, anneal)
        if C:
            x = _frac(t, W, C)
            if shape == "cosine":
                cool = eta_const + 0.5 * (eta_max - eta_const) * (1.0 + jnp.cos(jnp.pi * x))
            else:
                cool = inv_sqrt_cooldown(x, eta_max, eta_const, a)
            body = jnp.where(t < W + C, cool, body)
        return _warmup(t, body, W, eta_0, eta_max)

    return schedule


def chain(phases: Sequence[tuple[optax.Schedule, int]]) -> optax.Schedule:
    """Phases one after another: phase k sees t - (T_1 + ... + T_{k-1}); the last phase runs on
    past its own T (holding its final value)."""
    _need(len(phases) > 0, "a chain needs at least one phase")
    schedules = [s for s, _ in phases]
    if len(schedules) == 1:
        return schedules[0]
    boundaries = list(itertools.accumulate(int(steps) for _, steps in phases[:-1]))
    return optax.join_schedules(schedules, boundaries)


# ---------------------------------------------------------------------------------------
# from the config


# keys a phase of ``schedule.phases`` may override (besides peak_lr), with their types
PHASE_KEYS: dict[str, type] = {
    "warmup_frac": float, "warmup_steps": int, "start_lr": float, "min_lr_ratio": float,
    "decay_frac": float, "decay_shape": str, "cooldown_frac": float, "cooldown_shape": str,
    "inv_sqrt_alpha": float, "const_lr_ratio": float, "anneal_frac": float, "rewarm": bool,
    "peak_lr": float,
}


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase resolved to steps: its schedule name, T, eta_max and its other settings."""

    name: str
    steps: int  # T
    peak_lr: float  # eta_max
    options: dict  # the schedule keys of PHASE_KEYS (other than peak_lr) in effect

    def part(self, frac_key: str) -> int:
        """A fraction of the phase in whole steps, rounded half up."""
        return int(math.floor(self.options[frac_key] * self.steps + 0.5))

    @property
    def warmup(self) -> int:
        """W: ``warmup_steps`` when >= 0, else ``warmup_frac`` of T; 0 for constant and for an
        infinite phase with ``rewarm`` false."""
        o = self.options
        if self.name == "constant" or (self.name == "infinite" and not o["rewarm"]):
            return 0
        return o["warmup_steps"] if o["warmup_steps"] >= 0 else self.part("warmup_frac")

    def build(self) -> optax.Schedule:
        o, eta_max, T, W = self.options, self.peak_lr, self.steps, self.warmup
        eta_min = o["min_lr_ratio"] * eta_max
        if self.name == "cosine":
            return warmup_cosine(eta_max, T, W, eta_min, o["start_lr"])
        if self.name == "constant":
            return constant(eta_max)
        if self.name == "wsd":
            return wsd(eta_max, T, W, self.part("decay_frac"), eta_min, o["start_lr"], o["decay_shape"])
        cooldown = self.part("cooldown_frac") if o["rewarm"] else 0
        return infinite(eta_max, o["const_lr_ratio"] * eta_max, T, W, cooldown, self.part("anneal_frac"),
                        eta_min, o["start_lr"], o["cooldown_shape"], o["inv_sqrt_alpha"])

    def describe(self) -> str:
        return f"{self.name}:{self.steps}"


def resolve_phases(schedule_cfg: Any, peak_lr: float, total_steps: int) -> list[Phase]:
    """The phases of ``schedule.phases`` (or the single ``schedule.name`` phase), checked.

    ``phases`` form: ``NAME:STEPS[,key=value...]`` items separated by ``;``. Each phase
    starts from the section's values and overrides the listed keys (``PHASE_KEYS``); at most
    one phase may give ``*`` as STEPS, meaning the steps the others leave of ``total_steps``.
    The phase steps must add up to ``total_steps``.
    """
    base = {k: schedule_cfg[k] for k in PHASE_KEYS if k != "peak_lr"}
    text = schedule_cfg.get("phases", "").strip()
    if not text:
        phases = [Phase(schedule_cfg.name, int(total_steps), float(peak_lr), base)]
    else:
        raw = [_parse_phase(item.strip(), base, peak_lr) for item in text.split(";") if item.strip()]
        stars = [i for i, (_, steps, _, _) in enumerate(raw) if steps is None]
        _need(len(stars) <= 1, "schedule.phases: at most one phase may give '*' as its steps")
        known = sum(steps for _, steps, _, _ in raw if steps is not None)
        if stars:
            _need(known < total_steps, f"schedule.phases: the fixed phases take {known} steps, "
                                       f"leaving none of train.steps={total_steps} for '*'")
        else:
            _need(known == total_steps, f"schedule.phases add up to {known} steps, "
                                        f"not train.steps={total_steps}")
        phases = [Phase(name, total_steps - known if steps is None else steps, lr, opts)
                  for name, steps, lr, opts in raw]
    for phase in phases:
        _check_phase(phase)
    _check_anneal_last(phases)
    return phases


def _check_anneal_last(phases: Sequence[Phase]) -> None:
    """Refuse an infinite-schedule anneal before the last phase: the anneal is a branch for a
    deployable checkpoint (Ibrahim et al. 2024); later tasks continue from the constant-LR state
    before it, never from the annealed one."""
    for i, p in enumerate(phases[:-1]):
        _need(not (p.name == "infinite" and p.part("anneal_frac") > 0),
              f"schedule.phases: phase {i + 1} '{p.describe()}' anneals but phase {i + 2} follows "
              "it; anneal only in the last phase and continue later tasks from the checkpoint "
              "before the anneal")


def _parse_phase(item: str, base: dict, peak_lr: float) -> tuple[str, int | None, float, dict]:
    head, *pairs = item.split(",")
    name, sep, steps_text = head.partition(":")
    name, steps_text = name.strip(), steps_text.strip()
    _need(bool(sep) and bool(steps_text), f"schedule.phases item '{item}': expected NAME:STEPS[,key=value...]")
    _need(name in NAMES, f"schedule.phases item '{item}': '{name}' is not one of {', '.join(NAMES)}")
    if steps_text == "*":
        steps = None
    else:
        try:
            steps = int(steps_text)
        except ValueError:
            raise UserError(f"schedule.phases item '{item}': steps '{steps_text}' is not an integer or '*'") from None
        _need(steps > 0, f"schedule.phases item '{item}': steps must be positive")
    opts, lr = dict(base), float(peak_lr)
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        _need(bool(eq) and key in PHASE_KEYS,
              f"schedule.phases item '{item}': '{pair.strip()}' is not KEY=VALUE with KEY one of "
              f"{', '.join(PHASE_KEYS)}")
        parsed = _parse_value(PHASE_KEYS[key], value, f"schedule.phases item '{item}': {key}")
        if key == "peak_lr":
            lr = parsed
        else:
            opts[key] = parsed
    return name, steps, lr, opts


def _parse_value(kind: type, text: str, where: str) -> Any:
    if kind is bool:
        _need(text.lower() in ("true", "false"), f"{where} expects true or false, got '{text}'")
        return text.lower() == "true"
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"{where} expects {kind.__name__}, got '{text}'") from None


def _check_phase(p: Phase) -> None:
    o, where = p.options, (f"schedule phase '{p.describe()}'")
    _need(p.name in NAMES, f"schedule.name '{p.name}' is not one of {', '.join(NAMES)}")
    _need(p.steps > 0, f"{where}: needs at least one step")
    _need(p.peak_lr > 0 and math.isfinite(p.peak_lr), f"{where}: peak_lr must be positive, got {p.peak_lr}")
    for key in ("warmup_frac", "decay_frac", "cooldown_frac", "anneal_frac", "min_lr_ratio"):
        _need(0.0 <= o[key] <= 1.0, f"{where}: {key} must be in [0, 1], got {o[key]}")
    _need(0.0 < o["const_lr_ratio"] <= 1.0, f"{where}: const_lr_ratio must be in (0, 1], got {o['const_lr_ratio']}")
    _need(o["start_lr"] >= 0 and math.isfinite(o["start_lr"]), f"{where}: start_lr must be >= 0, got {o['start_lr']}")
    _need(o["decay_shape"] in DECAY_SHAPES,
          f"{where}: decay_shape '{o['decay_shape']}' is not one of {', '.join(DECAY_SHAPES)}")
    _need(o["cooldown_shape"] in COOLDOWN_SHAPES,
          f"{where}: cooldown_shape '{o['cooldown_shape']}' is not one of {', '.join(COOLDOWN_SHAPES)}")
    _need(o["rewarm"] or p.name == "infinite", f"{where}: rewarm=false applies to the infinite schedule only")
    try:
        p.build()  # the builders check the step counts (W < T, W + D <= T, ...)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check_section(schedule_cfg: Any, peak_lr: float, total_steps: int) -> None:
    """The ``schedule`` section: every phase's keys, values and step counts, and a
    ``start_lr`` that acts. ``start_lr`` only acts through a warmup, so it is refused when a
    phase asked for a warmup that rounds to 0 steps (``warmup_frac * steps < 0.5``); an
    explicit zero warmup (jump straight to the peak) is a choice, not a mistake."""
    for p in resolve_phases(schedule_cfg, peak_lr, total_steps):
        o = p.options
        rewarms = p.name != "constant" and (p.name != "infinite" or o["rewarm"])
        asked = o["warmup_steps"] > 0 or (o["warmup_steps"] < 0 and o["warmup_frac"] > 0)
        _need(not (o["start_lr"] > 0 and rewarms and asked and p.warmup == 0),
              f"schedule.start_lr {o['start_lr']:g} has no effect: the warmup of '{p.describe()}' is 0 "
              f"steps ({o['warmup_frac']:g} x {p.steps} rounds to 0); set schedule.warmup_steps")


def make_schedule(schedule_cfg: Any, peak_lr: float, total_steps: int) -> optax.Schedule:
    """The config's schedule over ``total_steps`` (train.steps) with eta_max = ``peak_lr``."""
    phases = resolve_phases(schedule_cfg, peak_lr, total_steps)
    return chain([(p.build(), p.steps) for p in phases])


def describe(schedule_cfg: Any, peak_lr: float, total_steps: int) -> str:
    """A one-line name: ``cosine`` or ``cosine:1000 -> cosine:500``."""
    phases = resolve_phases(schedule_cfg, peak_lr, total_steps)
    return phases[0].name if len(phases) == 1 else " -> ".join(p.describe() for p in phases)
