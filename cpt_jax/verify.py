"""``cpt-jax verify``: check a run's checkpoints, one step, or a params checkpoint against the
digests recorded when they were saved (``cpt_jax.integrity``), without training or a config.

Each orbax item is read onto this host as numpy (whatever mesh or process count wrote it),
a group of arrays at a time (host memory about the largest array), and every array's digest
is compared; a step's meta record is checked
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


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def iter_arrays(item: Any, whole: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """``(leaf name, array)`` of an orbax PyTree item (params' nested dicts, an optimizer
    state's lists and tuples alike), restored on the host a group of leaves at a time -- each
    group no bigger than the largest leaf -- so host memory stays about one leaf group however
    large the checkpoint; the whole tree at once when ``whole``."""
    import jax
    import orbax.checkpoint as ocp

    from cpt_jax.lawa import leaf_groups

    try:
        meta = storage.read_remote(item, "checkpoint metadata", lambda: ocp.PyTreeCheckpointHandler().metadata(item))
        flat, treedef = jax.tree_util.tree_flatten_with_path(getattr(meta, "tree", meta), is_leaf=_is_array)
    except ConnectionError:  # storage did not answer: exit 75
        raise
    except Exception as err:  # orbax/tensorstore raise many types for a damaged item
        raise UserError(f"{item} cannot be read: {one_line(err)}") from None
    names = [path_name(p) for p, _ in flat]
    if whole or not all(_is_array(m) for _, m in flat):  # leaves of unknown size: all at once
        groups = [names]
    else:
        groups = leaf_groups({n: (tuple(m.shape), np.dtype(m.dtype)) for n, (_, m) in zip(names, flat)})
    for group in groups:
        wanted = set(group)
        pick = lambda value, name: value if name in wanted else ocp.PLACEHOLDER  # noqa: E731
        target = treedef.unflatten([pick(0, n) for n in names])
        args = treedef.unflatten([pick(ocp.RestoreArgs(restore_type=np.ndarray), n) for n in names])
        def read(target: Any = target, args: Any = args) -> Any:
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
                return ckptr.restore(item, args=ocp.args.PyTreeRestore(item=target, restore_args=args))

        try:
            out = storage.read_remote(item, "checkpoint arrays", read)
        except ConnectionError:
            raise
        except Exception as err:
            raise UserError(f"{item} cannot be read: {one_line(err)}") from None
        for name, x in zip(names, treedef.flatten_up_to(out)):
            if name in wanted:
                yield name, x


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
    with storage.reading(step_dir, "the records of a checkpoint"):
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
    with storage.reading(root, "the checkpoint listing"):
        checks = _checks(root, path)
    failed = 0
    for check in checks:
        try:
            say(check())
        except UserError as err:
            failed += 1
            say(f"FAILED {err}")
    return failed


def _checks(root: Any, path: str) -> list[Callable[[], str]]:
    """One check per step of a run, the step itself, or the params checkpoint at ``root``."""
    if not root.exists():
        raise UserError(f"{path} does not exist")
    if (root / CHECKPOINTS).exists():
        run = RunDir(root)
        steps = run.complete_steps()
        if not steps:
            raise UserError(f"{run.checkpoints} holds no complete checkpoint")
        return [(lambda s=s: verify_step(run, s)) for s in steps]
    if root.parent.name == CHECKPOINTS and root.name.isdigit():
        return [lambda: verify_step(RunDir(root.parent.parent), int(root.name))]
    item = params_item(root)  # not a checkpoint at all: one line, exit 2
    return [lambda: verify_params(root, item)]
