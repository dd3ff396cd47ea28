"""Online LAWA during training: the k latest snapshots of the params, taken every nu steps.

LAWA (Kaddour 2022; Sanyal et al. 2023): ``theta_bar_t = (1/k) sum_{i<k} theta_{t - i nu}``,
evaluated beside the raw theta_t at each eval step (``eval_lawa/<domain>/loss``) once the
window holds k snapshots. The optimizer state is never averaged. The EMA evaluated beside it
(``lawa.ema``, ``eval_ema/<domain>/loss``) lives in the train state and is updated inside the
jitted step (``train.step.update_ema``).

Snapshots live in host memory (``lawa.store = "host"``, k full copies gathered onto every
process) or on disk (``"disk"``: one orbax params item per snapshot under ``RUN/lawa/<step>``,
averaged with the streaming offline code). ``state()`` / ``load_state()`` carry the window
through a checkpoint, so a resumed run continues the same average.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Literal, get_args

import numpy as np

from cpt_jax import checks
from cpt_jax import lawa as offline
from cpt_jax import tree_io
from cpt_jax.run_dir import PARAMS_ITEM, RunDir

Tree = dict[str, Any]


Store = Literal["host", "disk"]  # k snapshots in host memory | params items under RUN/lawa/
STORES: tuple[str, ...] = get_args(Store)


def check_section(lawa_cfg: Any) -> None:
    """The ``lawa`` section: window k >= 0, nu > 0, the store, EMA beta in [0, 1)."""
    checks.choice("lawa.store", lawa_cfg.store, STORES)
    checks.at_least_zero("lawa.k", lawa_cfg.k, "0 = off")
    checks.positive("lawa.every", lawa_cfg.every)
    checks.unit_interval("lawa.ema", lawa_cfg.ema, closed_top=False, meaning="0 = off")


def _to_host(params: Tree) -> Tree:
    """Full numpy copies of (possibly sharded, multi-process) arrays on this host."""
    import jax

    leaves = jax.tree_util.tree_leaves(params)
    if all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), jax.device_get(params))
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


def _to_device(host: Tree, like: Tree) -> Tree:
    """Host arrays placed with the shardings (and dtypes) of ``like``."""
    import jax

    def put(x: np.ndarray, ref: Any) -> Any:
        x = np.asarray(x, dtype=ref.dtype)
        sharding = getattr(ref, "sharding", None)
        if sharding is None:
            return jax.numpy.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, host, like)


class OnlineLawa:
    """The LAWA window (k snapshots every nu steps, host or disk)."""

    def __init__(self, k: int, every: int, store: str = "host", run_dir: str = "") -> None:
        self.k, self.every, self.store = int(k), int(every), store
        self.dir = RunDir(run_dir or ".").lawa  # local or gs://
        self.steps: list[int] = []  # window, oldest first
        self.snapshots: dict[int, Tree] = {}  # host store only
        self._protected: int | None = None  # disk: oldest step a saved checkpoint still needs

    @classmethod
    def from_config(cls, lawa_cfg: Any, run_dir: str) -> "OnlineLawa | None":
        """From the ``lawa`` config section (disk snapshots under ``run_dir``); None when LAWA is
        off (k = 0)."""
        lw = lawa_cfg
        if lw.k == 0:
            return None
        return cls(lw.k, lw.every, lw.store, run_dir)

    # -- per step ---------------------------------------------------------------------

    def after_step(self, step: int, params: Tree) -> None:
        """Call with theta_t after optimizer step t: a snapshot when nu | t."""
        if self.k > 0 and step % self.every == 0 and step not in self.steps:
            self._snapshot(step, params)

    def _snapshot(self, step: int, params: Tree) -> None:
        self.steps.append(step)
        if self.store == "host":
            self.snapshots[step] = _to_host(params)
        else:
            self._save_disk(step, params)
        while len(self.steps) > self.k:
            old = self.steps.pop(0)
            self.snapshots.pop(old, None)
        self._prune_disk()

    # -- averages ---------------------------------------------------------------------

    @property
    def full(self) -> bool:
        """The window holds k snapshots (LAWA is only reported then)."""
        return self.k > 0 and len(self.steps) == self.k

    def average_host(self) -> Tree:
        """theta_bar over the window as host numpy arrays (fp32 running sum, param dtypes)."""
        if not self.steps:
            raise ValueError("the LAWA window is empty")
        if self.store == "disk":
            return offline.average([self._source(s) for s in self.steps])
        flats = [tree_io.flatten(self.snapshots[s]) for s in self.steps]
        out = {}
        for path, first in flats[0].items():
            acc = np.array(first, dtype=tree_io.accumulator_dtype(first.dtype))
            for f in flats[1:]:
                np.add(acc, f[path], out=acc)
            np.divide(acc, len(flats), out=acc)
            out[path] = acc.astype(first.dtype)
        return tree_io.unflatten(out)

    def lawa_params(self, like: Tree) -> Tree | None:
        """theta_bar on device like ``like`` when the window is full, else None."""
        return _to_device(self.average_host(), like) if self.full else None

    def eval_metrics(self, evaluate: Callable[[Tree], dict], like: Tree) -> dict[str, float]:
        """``eval_lawa/...`` metrics from ``evaluate(params) -> results`` (none until the window is full)."""
        from cpt_jax.eval.perplexity import to_metrics

        params = self.lawa_params(like)
        return {} if params is None else to_metrics(evaluate(params), prefix="eval_lawa")

    # -- checkpointing ----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue these averages, as host arrays:
        ``steps`` (int64 [n], the window), ``snapshots`` {``step_<t>``: params} (host store);
        empty parts are left out (orbax writes no empty tree)."""
        tree: dict[str, Any] = {}
        if self.steps:
            tree["steps"] = np.asarray(self.steps, np.int64)
            if self.store == "host":
                tree["snapshots"] = {f"step_{s}": self.snapshots[s] for s in self.steps}
        if self.store == "disk":
            self._protected = min(self.steps) if self.steps else None
            self._prune_disk()
        return tree

    def load_state(self, tree: dict[str, Any]) -> None:
        """Continue from ``state()`` of a checkpoint."""
        self.steps = [int(s) for s in np.asarray(tree.get("steps", np.zeros(0, np.int64))).reshape(-1)]
        if self.store == "host":
            snaps = tree.get("snapshots", {})
            self.snapshots = {s: snaps[f"step_{s}"] for s in self.steps}
        else:
            self._protected = min(self.steps) if self.steps else None

    # -- disk store -------------------------------------------------------------------

    def _source(self, step: int) -> offline.Source:
        return offline.Source(f"lawa snapshot {step}", os.fspath(self.dir / str(step) / PARAMS_ITEM), {})

    def _save_disk(self, step: int, params: Tree) -> None:
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(self.dir / str(step) / PARAMS_ITEM, params, force=True)
            ckptr.wait_until_finished()

    def _prune_disk(self) -> None:
        """Delete snapshot dirs out of the window and older than any saved checkpoint needs."""
        import jax

        if self.store != "disk" or jax.process_index() != 0 or not self.dir.is_dir():
            return
        keep_from = min([*self.steps, *([self._protected] if self._protected is not None else [])], default=0)
        for snapshot in self.dir.iterdir():
            name = snapshot.name
            if name.isdigit() and int(name) not in self.steps and int(name) < keep_from:
                snapshot.rmtree(missing_ok=True)
