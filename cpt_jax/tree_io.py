"""Trees of arrays as flat ``{"a/b/c": leaf}`` dicts, and orbax params items read onto the host.

Params are plain nested dicts, so a ``/``-joined key path names every leaf. These are the
helpers LAWA's streaming average, the online LAWA window and the checkpoint reader share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cpt_jax import storage
from cpt_jax.errors import UserError

Tree = dict[str, Any]


def path_name(path: Any) -> str:
    """The ``a/b/c`` name of a jax key path (dict keys, attribute names, sequence indices):
    ``jax.tree_util.keystr`` in its simple form."""
    import jax

    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a/b/c": leaf}`` (params are plain nested dicts)."""
    if isinstance(tree, dict) or (hasattr(tree, "keys") and hasattr(tree, "__getitem__")):
        out: dict[str, Any] = {}
        for key in tree.keys():
            out.update(flatten(tree[key], f"{prefix}{key}/"))
        return out
    return {prefix[:-1]: tree}


def unflatten(flat: dict[str, Any]) -> Tree:
    """The nested dict of ``flatten``'s output."""
    tree: Tree = {}
    for path, leaf in flat.items():
        node = tree
        *parents, name = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = leaf
    return tree


def leaf_specs(params_dir: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{leaf path: (shape, dtype)}`` of an orbax params item, from metadata only."""
    import orbax.checkpoint as ocp

    try:
        meta = storage.read_remote(params_dir, "checkpoint metadata",
                                   lambda: ocp.PyTreeCheckpointHandler().metadata(storage.path(params_dir)))
    except ConnectionError:  # storage did not answer: exit 75
        raise
    except Exception as err:  # orbax raises many types for a missing, partial or corrupt item
        raise UserError(f"cannot read checkpoint metadata in {params_dir}: {one_line(err)}") from None
    tree = getattr(meta, "tree", meta)
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flatten(tree).items()}


def restore_numpy(params_dir: str, leaves: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{leaf path: array}`` of an orbax params item restored onto this host as numpy (any
    writer's sharding or process count); only the ``leaves`` listed when given."""
    import orbax.checkpoint as ocp

    path = storage.path(params_dir)
    if leaves is None:
        leaves = list(leaf_specs(params_dir))
    item = unflatten({leaf: 0 for leaf in leaves})
    args = unflatten({leaf: ocp.RestoreArgs(restore_type=np.ndarray) for leaf in leaves})
    try:
        def read() -> Any:
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
                return ckptr.restore(
                    path, args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
                )

        tree = storage.read_remote(path, "checkpoint arrays", read)
    except ConnectionError:
        raise
    except Exception as err:  # a corrupt or truncated array file
        raise UserError(f"cannot restore {params_dir}: {one_line(err)}") from None
    return flatten(tree)


def one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """fp64 sums for fp64 leaves, fp32 for everything else (bf16, fp16, fp32)."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
