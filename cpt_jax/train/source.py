"""What the training loop asks of its data: ``TrainSource``, and an adapter for plain sources.

The loop needs the batch of step k as a pure function of k (so resume needs only the step), an
iterator from a step on (prefetching where it can), what a checkpoint stores to resume, a
check of that stored state, and for the run's banner where the batches come from and the
mixture weights at a step. ``cpt_jax.data.pipeline.TrainData`` is the full source; a test or
tool can pass anything with ``domains`` and ``batch(step)``, and ``as_source`` fills in the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

Batch = dict[str, np.ndarray]


@runtime_checkable
class TrainSource(Protocol):
    """Batches of a training run, each a pure function of its step."""

    domains: list[str]

    def batch(self, step: int) -> Batch: ...

    def iterator(self, start_step: int, stop_step: int) -> Iterator[Batch]: ...

    def state(self, step: int) -> dict: ...

    def resume_step(self, state: dict) -> int: ...

    def describe(self) -> str: ...

    def weights_at(self, step: int) -> np.ndarray | None: ...


class BatchFunction:
    """A ``TrainSource`` over any object with ``domains`` and ``batch(step)`` (no prefetch; the
    checkpointed state is the step alone; described by its class and domains)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.domains = list(inner.domains)

    def batch(self, step: int) -> Batch:
        return self.inner.batch(step)

    def iterator(self, start_step: int, stop_step: int) -> Iterator[Batch]:
        return (self.inner.batch(s) for s in range(start_step, stop_step))

    def state(self, step: int) -> dict:
        return {"step": int(step)}

    def resume_step(self, state: dict) -> int:
        return int(state["step"])

    def describe(self) -> str:
        return f"{', '.join(self.domains)} (batches of a {type(self.inner).__name__})"

    def weights_at(self, step: int) -> np.ndarray | None:
        """None: a plain source states no mixture."""
        return None


def as_source(data: Any) -> TrainSource:
    """``data`` itself when it is a full ``TrainSource``, else wrapped in ``BatchFunction``."""
    return data if isinstance(data, TrainSource) else BatchFunction(data)
