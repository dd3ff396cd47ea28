"""Our side of the benchmarks: the engine's jitted train step on one process's devices.

Builds exactly what ``cpt_jax.train.loop.run`` builds (``make_optimizer``, ``TrainState`` with
``state_shardings``, ``make_train_step`` with donation) from a ``PythiaConfig`` and a few
optimizer numbers, without ``cpt_jax.config`` (ml-collections is absent from the GPU image).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np

from cpt_jax import sharding
from cpt_jax.model import pythia
from cpt_jax.model.presets import PRESETS
from cpt_jax.optim import make_optimizer
from cpt_jax.schedules import make_schedule
from cpt_jax.train.state import TrainState, abstract_state, fresh_state, state_shardings
from cpt_jax.train.step import NextTokenObjective, make_train_step

# bench-only shape for CPU smoke runs (not a Pythia size)
TINY = dict(vocab_size=1024, hidden_size=64, num_layers=2, num_heads=4, rotary_pct=0.25)


class AttrDict(dict):
    """A dict whose keys read as attributes (what make_optimizer / make_schedule expect)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclasses.dataclass(frozen=True)
class OptSettings:
    """AdamW + schedule numbers shared by ours and the peer (Pythia's defaults)."""

    lr: float = 3e-4
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    schedule: str = "constant"  # or cosine (warmup from 0, floor 0.1 x peak)
    warmup_steps: int = 0


def opt_config(o: OptSettings) -> AttrDict:
    """The ``optim`` + ``schedule`` sections ``make_optimizer`` reads (config.py's defaults)."""
    schedule = AttrDict(
        name=o.schedule, warmup_frac=0.0, warmup_steps=o.warmup_steps, start_lr=0.0,
        min_lr_ratio=0.1, decay_frac=0.1, decay_shape="linear", cooldown_frac=0.2,
        cooldown_shape="cosine", inv_sqrt_alpha=10.0, const_lr_ratio=0.5, anneal_frac=0.0,
        rewarm=True, phases="",
    )
    optim = AttrDict(peak_lr=o.lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                     grad_clip=o.grad_clip)
    return AttrDict(optim=optim, schedule=schedule)


def lr_values(o: OptSettings, total_steps: int) -> np.ndarray:
    """eta_t for t = 0 .. total_steps - 1, from our schedule (the peer is fed the same)."""
    sched = make_schedule(opt_config(o).schedule, o.lr, total_steps)
    return np.asarray([float(sched(t)) for t in range(total_steps)])


def model_config(preset: str, **overrides: Any) -> pythia.PythiaConfig:
    """PythiaConfig of a Pythia preset name (``160m``...) or ``tiny``, with field overrides."""
    if preset == "tiny":
        shape = dict(TINY)
    elif preset in PRESETS:
        p = PRESETS[preset]
        shape = dict(vocab_size=p.vocab_size, hidden_size=p.hidden_size, num_layers=p.num_layers,
                     num_heads=p.num_heads, rotary_pct=p.rotary_pct)
    else:
        raise SystemExit(f"unknown preset {preset!r}: tiny or one of {', '.join(PRESETS)}")
    return pythia.PythiaConfig(**shape, **overrides)


def n_params(c: pythia.PythiaConfig) -> int:
    return pythia.count_params(c)


@dataclasses.dataclass
class Ours:
    """A built engine: ``state`` (donated each step), ``step(state, batch)``, ``mesh``."""

    state: TrainState
    step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    mesh: Any
    batch_size: int

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return sharding.global_batch(batch, self.mesh, self.batch_size)

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """One optimizer step (dispatch only; the metrics are device arrays)."""
        self.state, metrics = self.step(self.state, self.put(batch))
        return metrics


def build(c: pythia.PythiaConfig, o: OptSettings, batch_size: int, total_steps: int,
          vocab_chunk: int = 0, seed: int = 0, params: Any = None, micro_batches: int = 1) -> Ours:
    """The engine's state and jitted step for ``c`` on all local devices (batch over data)."""
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    sharding.check_batch(mesh, batch_size, micro_batches)
    objective = NextTokenObjective(c, 1, vocab_chunk=vocab_chunk)
    cfg = opt_config(o)
    schedule = make_schedule(cfg.schedule, o.lr, total_steps)
    tx = make_optimizer(cfg.optim, schedule)
    shard = state_shardings(abstract_state(c, tx), mesh)
    if params is not None:
        params = sharding.put_global(jax.tree.map(np.asarray, params), shard.params)
    state = fresh_state(c, tx, shard, seed, params)
    step = make_train_step(objective, tx, schedule, shard, mesh, micro_batches)
    return Ours(state=state, step=step, mesh=mesh, batch_size=batch_size)


def tree_bytes(tree: Any) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def random_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` host batches of uniform random ids ``{"tokens" [B, T+1], "domain" [B]}``."""
    rng = np.random.default_rng(seed)
    return [{"tokens": rng.integers(0, vocab, (batch, seq + 1), dtype=np.int32),
             "domain": np.zeros((batch,), np.int32)} for _ in range(n)]
