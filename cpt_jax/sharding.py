"""The ``data`` x ``fsdp`` x ``tensor`` device mesh, logical-axis rules and shardings.

* ``data``: pure data parallelism (params replicated across it).
* ``fsdp``: data parallelism whose params and optimizer state are sharded over the ``embed``
  (d) dimension (ZeRO-3 style; XLA all-gathers weights for each matmul).
* ``tensor``: Megatron-style model parallelism over ``heads`` (fused qkv / attention output),
  ``mlp`` (F) and ``vocab`` (V).

The batch's leading dimension is split over ``("data", "fsdp")``. Every sharded dimension must
divide by its mesh axis; otherwise :func:`param_shardings` raises a one-line ``UserError``
before anything is compiled (no silent fallback to replication).
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cpt_jax.errors import UserError

AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")

# logical axis name (pythia.logical_axes) -> mesh axis (None = replicated)
RULES: dict[str, str | None] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "layers": None,
}


def mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
    """Sizes of (data, fsdp, tensor); one of them may be -1 = the remaining devices."""
    sizes = [int(mesh_cfg[a]) for a in AXES]
    spec = ", ".join(f"{a}={s}" for a, s in zip(AXES, sizes))
    if sum(s == -1 for s in sizes) > 1:
        raise UserError(f"mesh ({spec}): at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh ({spec}): sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise UserError(
                f"mesh ({spec}): {num_devices} devices do not divide by the fixed axes' product {known}"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"mesh ({spec}) needs {math.prod(sizes)} devices but {num_devices} are available"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: Any, devices: list | None = None) -> Mesh:
    """The 3-axis mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # unusual topologies: plain process-major order
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, AXES)


def logical_to_spec(names: tuple[str, ...]) -> P:
    """PartitionSpec for a tuple of logical axis names under :data:`RULES`."""
    return P(*(RULES.get(n) for n in names))


def _path_name(path: tuple) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """NamedSharding per parameter (``params`` may hold arrays or ShapeDtypeStructs)."""
    from cpt_jax.model import pythia

    axes = pythia.logical_axes(params)

    def one(path: tuple, leaf: Any, names: tuple[str, ...]) -> NamedSharding:
        spec = logical_to_spec(names)
        for dim, (size, axis) in enumerate(zip(leaf.shape, spec)):
            if axis is not None and size % mesh.shape[axis]:
                raise UserError(
                    f"parameter {_path_name(path)} dimension {dim} ('{names[dim]}', size {size}) "
                    f"does not divide by mesh axis '{axis}' of size {mesh.shape[axis]}"
                )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(
        one, params, axes, is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(n, str) for n in x)
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def like_params(tree: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a tree that embeds param-shaped leaves (optimizer moments, LAWA sums):
    a leaf whose dict-key path ends with a parameter's path and has that parameter's shape
    gets the parameter's sharding; every other leaf (counts, scalars) is replicated."""
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    by_path = {
        tuple(_dict_keys(path)): (tuple(leaf.shape), s) for (path, leaf), s in zip(flat_p, flat_s)
    }
    rep = replicated(mesh)

    def one(path: tuple, leaf: Any) -> NamedSharding:
        keys = _dict_keys(path)
        shape = tuple(getattr(leaf, "shape", ()))
        for i in range(len(keys)):
            hit = by_path.get(tuple(keys[i:]))
            if hit is not None and hit[0] == shape:
                return hit[1]
        return rep

    return jax.tree_util.tree_map_with_path(one, tree)


def _dict_keys(path: tuple) -> list[str]:
    return [str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey)]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over ``("data", "fsdp")``, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def check_batch(mesh: Mesh, batch_size: int, micro_batches: int) -> None:
    """Each micro-batch (``B / M`` rows) must split evenly over ``data * fsdp`` devices."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % micro_batches or (batch_size // micro_batches) % n:
        raise UserError(
            f"train.batch_size {batch_size} / train.micro_batches {micro_batches} must be a "
            f"multiple of mesh data x fsdp = {n}"
        )
    if batch_size % jax.process_count():
        raise UserError(
            f"train.batch_size {batch_size} does not divide by the {jax.process_count()} processes"
        )


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, global_rows: int) -> dict[str, jax.Array]:
    """This process's rows of the global batch -> global ``jax.Array``s sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (global_rows, *np.shape(v)[1:]))
        for k, v in local.items()
    }


def put_global(tree: Any, shardings: Any) -> Any:
    """Host (numpy) arrays, identical on every process -> global arrays with ``shardings``."""

    def one(x: Any, s: NamedSharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(one, tree, shardings)


# ---------------------------------------------------------------------------------------
# multi-host

def _multihost_env() -> bool:
    if os.environ.get("SLURM_NTASKS", "1") not in ("", "1") and "SLURM_JOB_ID" in os.environ:
        return True
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS",
                                          "MEGASCALE_COORDINATOR_ADDRESS"))


def maybe_initialize_distributed(cfg: Any) -> bool:
    """``jax.distributed.initialize()`` when ``mesh.distributed`` is ``on``, or ``auto`` and the
    environment describes several processes (JAX coordinator variables, a multi-task SLURM job,
    a multi-worker TPU slice). Returns whether it initialised. Call before any other jax use.

    Without explicit variables jax auto-detects SLURM / TPU / MPI clusters; the launchers in
    ``launch/`` set ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
    """
    mode = cfg.mesh.distributed
    if mode == "off" or (mode == "auto" and not _multihost_env()):
        return False
    if _already_initialized():
        return True
    kwargs: dict[str, Any] = {}
    addr = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if addr:
        kwargs["coordinator_address"] = addr
        if "JAX_NUM_PROCESSES" in os.environ:
            kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
        if "JAX_PROCESS_ID" in os.environ:
            kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"jax.distributed.initialize failed: {str(err).splitlines()[0]}") from None
    return True


def _already_initialized() -> bool:
    try:
        from jax._src import distributed

        return distributed.global_state.client is not None
    except Exception:  # private API moved: assume not initialised
        return False
