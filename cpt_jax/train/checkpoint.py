"""Training checkpoints: an orbax ``CheckpointManager`` under ``RUN/checkpoints/<step>/``.

Each step directory holds the composite items

    params     StandardSave of the plain params dict
    opt_state  StandardSave of the optax state (fp32 moments, counts)
    extras     StandardSave of the objective's state (omitted when it is empty: orbax cannot
               write an empty tree; restoring then keeps the objective's fresh extras)
    ema        StandardSave of the params' online EMA and its update count (omitted when
               ``lawa.ema`` is 0, restored like ``extras``)
    meta       JsonSave: {"step", "data": {"step"}, "tokens", "wall_time_s", "time", "run",
               "model", "digest", "meta_digest"}: "run" is the run's record (what a resume
               may not change), "digest" one per array of params, opt_state, extras and ema
               (``cpt_jax.integrity``), "meta_digest" one of the record itself

Saves are asynchronous (``checkpoint.async_save``): the step's arrays are copied off the devices
and written in the background while training goes on. Orbax writes each step under a temporary
name and renames it (or writes ``commit_success.txt`` on object stores) only when complete, so a
half-written step is never listed or restored. The newest ``checkpoint.keep`` steps and every
step in ``checkpoint.keep_steps`` are kept (keep <= 0 keeps all).

Restoring takes the *current* run's shardings: a run saved on 8 devices restores on 4, and
checks every array against its digest (a mismatch is a ``UserError`` naming the step, so the
resume falls back to the step before). Which steps are complete is the run directory's
business (``RunDir.complete_steps``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from cpt_jax import checks, integrity, storage, tree_io
from cpt_jax.errors import UserError
from cpt_jax.model.checkpoint import restore_params_item
from cpt_jax.run_dir import PARAMS_ITEM, RunDir
from cpt_jax.train.collective import main_checks
from cpt_jax.train.state import TrainState

ITEMS = ("params", "opt_state", "extras", "ema", "meta", "lawa")  # lawa: RunCheckpoints.save host_items
DIGESTED = ("params", "opt_state", "extras", "ema")
OPTIONAL = ("extras", "ema")  # state items saved only when they hold arrays


def check_section(ckpt_cfg: Any) -> None:
    """The ``checkpoint`` section: every >= 0, keep_steps a list of steps."""
    checks.at_least_zero("checkpoint.every", ckpt_cfg.every, "0 = only at the end")
    _keep_steps(ckpt_cfg.keep_steps)


def _keep_steps(text: str) -> list[int]:
    try:
        return [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        raise UserError(f"checkpoint.keep_steps must be comma-separated integers, got {text!r}") from None


class RunCheckpoints:
    """The run's checkpoint manager (one per process; every process must call save/restore)."""

    def __init__(self, run: RunDir | str, ckpt_cfg: Any):
        import orbax.checkpoint as ocp
        from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

        self.directory = (run if isinstance(run, RunDir) else RunDir(run)).checkpoints
        keep, keep_steps = int(ckpt_cfg.keep), _keep_steps(ckpt_cfg.keep_steps)
        policies: list[Any] = [pp.LatestN(keep) if keep > 0 else pp.PreserveAll()]
        if keep_steps:
            policies.append(pp.CustomSteps(keep_steps))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=bool(ckpt_cfg.async_save),
            preservation_policy=pp.AnyPreservationPolicy(policies),
            create=True,
        )
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def reload(self) -> None:
        """Re-read the step list from storage (after a step was moved aside)."""
        self.manager.reload()

    def save(
        self, state: TrainState, meta: dict[str, Any], host_items: dict[str, Any] | None = None
    ) -> None:
        """Start saving ``state`` at ``meta["step"]`` (asynchronously when configured);
        ``host_items`` are extra named trees of host arrays (e.g. the LAWA window), empty ones skipped."""
        a = self._ocp.args
        step = int(meta["step"])
        needed = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
            [getattr(state, name) for name in DIGESTED]))
        main_checks(lambda: storage.check_free_space(self.directory, needed, f"checkpoint step {step}"),
                    f"process 0 found no room for checkpoint step {step} under {self.directory}")
        meta = dict(meta, digest={name: integrity.tree_digest(getattr(state, name))[0]
                                  for name in DIGESTED})
        meta["meta_digest"] = integrity.meta_digest(meta)
        items = {
            "params": a.StandardSave(state.params),
            "opt_state": a.StandardSave(state.opt_state),
            "meta": a.JsonSave(meta),
        }
        for name in OPTIONAL:
            if jax.tree.leaves(getattr(state, name)):
                items[name] = a.StandardSave(getattr(state, name))
        for name, tree in (host_items or {}).items():
            if jax.tree.leaves(tree):
                items[name] = a.StandardSave(tree)
        self._needed = needed
        self._full_disk_is_one_line(step, lambda: self.manager.save(step, args=a.Composite(**items), force=True))

    def _full_disk_is_one_line(self, step: int | None, write: Any) -> None:
        """Run ``write``; an out-of-space error anywhere in it becomes one UserError line."""
        which = f"checkpoint step {step}" if step is not None else "a checkpoint"
        with storage.full_disk_is_one_line(self.directory, which, getattr(self, "_needed", 0)):
            write()

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """Restore ``step`` onto ``target``'s shapes and shardings (ShapeDtypeStructs with
        ``sharding``, or arrays); ``target.extras`` / ``target.ema`` are kept when the step
        saved none."""
        a = self._ocp.args
        step_dir = self.directory / str(step)
        items = {
            "params": a.StandardRestore(_abstract(target.params)),
            "opt_state": a.StandardRestore(_abstract(target.opt_state)),
            "meta": a.JsonRestore(),
        }
        saved = [n for n in OPTIONAL if (step_dir / n).is_dir() and jax.tree.leaves(getattr(target, n))]
        for name in saved:
            items[name] = a.StandardRestore(_abstract(getattr(target, name)))
        try:
            out = self.manager.restore(step, args=a.Composite(**items))
        except Exception as err:  # orbax/tensorstore raise many types for a bad or partial step
            raise UserError(
                f"cannot restore checkpoint {step_dir} (different model or optimizer?): "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
            ) from None
        meta = dict(out["meta"])
        where = f"checkpoint step {step} ({step_dir})"
        integrity.check_meta(meta, where)
        recorded = meta.get("digest") or {}
        for name in ("params", "opt_state", *saved):
            if name in recorded:
                integrity.compare(recorded[name], integrity.tree_digest(out[name])[0], where, name)
        kept = {n: out[n] if n in saved else getattr(target, n) for n in OPTIONAL}
        state = TrainState(
            step=jax.device_put(np.int32(meta["step"]), _sharding(target.step)),
            params=out["params"],
            opt_state=out["opt_state"],
            **kept,
        )
        return state, meta

    def restore_host_item(self, step: int, name: str) -> Any:
        """A ``host_items`` tree saved at ``step``, as host numpy arrays (None when absent)."""
        item = self.directory / str(step) / name
        if not item.is_dir():
            return None
        return tree_io.unflatten(tree_io.restore_numpy(str(item)))

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._full_disk_is_one_line(None, self.manager.wait_until_finished)

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _sharding(x: Any) -> Any:
    return getattr(x, "sharding", None)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_sharding(x)), tree)


def restore_params(step_dir: Any, shardings: Any = None) -> dict[str, Any]:
    """The ``params`` item of one step directory ``RUN/checkpoints/<step>``, placed with
    ``shardings`` (a tree of NamedShardings matching the params) or on this process's first
    device when None."""
    return restore_params_item(storage.path(step_dir) / PARAMS_ITEM, shardings)
