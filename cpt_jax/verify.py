"""``cpt-jax verify``: check a run's checkpoints, one step, or a params checkpoint against the
digests recorded when they were saved (``cpt_jax.integrity``), without training or a config.

Each orbax item is read onto this host as numpy (whatever mesh or process count wrote it),
one item at a time, and every array's digest is compared; a step's meta record is checked
against its own digest and its model against the run's ``model.json``. A checkpoint saved
before digests were recorded is reported as such (readable, but not verifiable).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from cpt_jax import integrity, storage
from cpt_jax.errors import UserError
from cpt_jax.run_dir import CHECKPOINTS, PARAMS_ITEM, RunDir
from cpt_jax.tree_io import one_line, path_name


def read_item(item: Any) -> dict[str, np.ndarray]:
    """``{leaf name: array}`` of an orbax PyTree item, restored on the host."""
    import jax
    import orbax.checkpoint as ocp

    is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")  # noqa: E731
    try:
        handler = ocp.PyTreeCheckpointHandler()
        tree = getattr(handler.metadata(item), "tree", None)
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree, is_leaf=is_leaf)
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
            out = ckptr.restore(item, args=ocp.args.PyTreeRestore(restore_args=args))
    except Exception as err:  # orbax/tensorstore raise many types for a damaged item
        raise UserError(f"{item} cannot be read: {one_line(err)}") from None
    return {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(out)[0]}


def iter_arrays(item: Any) -> Iterator[tuple[str, np.ndarray]]:
    """``(leaf name, array)`` of an orbax item, a group of leaves (no bigger than the largest)
    at a time for the plain nested dicts params are, so host memory stays about one leaf group;
    other trees (optimizer states) are read whole."""
    from cpt_jax.lawa import leaf_groups
    from cpt_jax.tree_io import leaf_specs, restore_numpy

    try:
        specs = leaf_specs(os.fspath(item))
    except (UserError, AttributeError, TypeError):  # not a tree of dicts
        yield from read_item(item).items()
        return
    for group in leaf_groups(specs):
        yield from restore_numpy(os.fspath(item), group).items()


def _check_arrays(arrays: Iterable[tuple[str, np.ndarray]], recorded: dict[str, str] | None,
                  where: str, item: str) -> tuple[int, int]:
    """``(arrays checked, non-finite arrays)``; a digest mismatch raises."""
    digests, bad = {}, 0
    for name, x in arrays:
        digests[name], count = integrity.array_digest_np(x)
        bad += bool(count)
        del x
    integrity.compare(recorded, digests, where, item)
    return len(digests), bad


def verify_step(run: RunDir, step: int) -> str:
    """One line about one complete step; raises a UserError naming the first problem."""
    from cpt_jax.model.checkpoint import locate, recorded_digest

    step_dir = run.step_dir(step)
    where = f"checkpoint step {step} ({step_dir})"
    locate(step_dir)  # its model is readable
    recorded_digest(step_dir / PARAMS_ITEM)  # its meta matches its own digest
    meta = run.step_meta(step) or {}
    digest = meta.get("digest")
    n = nonfinite = 0
    for item in ("params", "opt_state", "extras", "ema"):
        if not (step_dir / item).is_dir():
            continue
        k, bad = _check_arrays(iter_arrays(step_dir / item), (digest or {}).get(item), where, item)
        n, nonfinite = n + k, nonfinite + bad
    return _verdict(where, n, nonfinite, digest is not None)


def params_item(path: Any) -> Any:
    """The params item of a params checkpoint (a UserError when ``path`` is none)."""
    from cpt_jax.model.checkpoint import locate

    found = locate(path)
    if found is None:
        raise UserError(f"{path} is a Hugging Face folder: it records no digests to verify")
    return found[1]


def verify_params(path: Any, item: Any) -> str:
    """One line about a params checkpoint; raises a UserError naming the first problem."""
    from cpt_jax.model.checkpoint import recorded_digest

    recorded = recorded_digest(item)
    n, nonfinite = _check_arrays(iter_arrays(item), recorded, os.fspath(path), "params")
    return _verdict(os.fspath(path), n, nonfinite, recorded is not None)


def _verdict(where: str, n: int, nonfinite: int, recorded: bool) -> str:
    if not recorded:
        return f"{where}: readable, {n} arrays, but saved without digests (not verifiable)"
    tail = f"; {nonfinite} arrays hold NaN or inf" if nonfinite else ""
    return f"{where}: ok, {n} arrays match their digests{tail}"


def verify(path: str, say: Callable[[str], None] = print) -> int:
    """Verify a run (every complete step), a step or a params checkpoint; the number of
    checkpoints that failed (each named in one line by ``say``)."""
    root = storage.path(path)
    if not root.exists():
        raise UserError(f"{path} does not exist")
    if (root / CHECKPOINTS).exists():
        run = RunDir(root)
        steps = run.complete_steps()
        if not steps:
            raise UserError(f"{run.checkpoints} holds no complete checkpoint")
        checks = [(lambda s=s: verify_step(run, s)) for s in steps]
    elif root.parent.name == CHECKPOINTS and root.name.isdigit():
        checks = [lambda: verify_step(RunDir(root.parent.parent), int(root.name))]
    else:
        item = params_item(root)  # not a checkpoint at all: one line, exit 2
        checks = [lambda: verify_params(root, item)]
    failed = 0
    for check in checks:
        try:
            say(check())
        except UserError as err:
            failed += 1
            say(f"FAILED {err}")
    return failed
