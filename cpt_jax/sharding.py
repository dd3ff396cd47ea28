"""The ``data`` x ``fsdp`` x ``tensor`` device mesh, logical-axis rules and shardings.

* ``data``: pure data parallelism (params replicated across it).
* ``fsdp``: data parallelism whose params and optimizer state are sharded over the ``embed``
  (d) dimension (ZeRO-3 style; XLA all-gathers weights for each matmul).
* ``tensor``: Megatron-style model parallelism over ``heads`` (fused qkv / attention output),
  ``mlp`` (F) and ``vocab`` (V).

How activations are laid out on this mesh is ``cpt_jax.layout``'s job.

The batch's leading dimension is split over ``("data", "fsdp")``. Every sharded dimension must
divide by its mesh axis; otherwise :func:`param_shardings` raises a one-line ``UserError``
before anything is compiled (no silent fallback to replication).
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal, get_args

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cpt_jax import checks, tree_io
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


Distributed = Literal["auto", "on", "off"]  # jax.distributed.initialize(): detect | always | never
DISTRIBUTED: tuple[str, ...] = get_args(Distributed)


def check_section(mesh_cfg: Any) -> None:
    """The ``mesh`` section: axis sizes (positive or -1), the distributed mode and timeouts."""
    for axis in AXES:
        size = mesh_cfg[axis]
        if size == 0 or size < -1:
            raise UserError(f"mesh.{axis} must be a positive size or -1, got {size}")
    checks.choice("mesh.distributed", mesh_cfg.distributed, DISTRIBUTED)
    for name in ("init_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s"):
        checks.positive(f"mesh.{name}", mesh_cfg[name])


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


def param_shardings(params: Any, axes: Any, mesh: Mesh) -> Any:
    """NamedSharding per parameter (``params`` may hold arrays or ShapeDtypeStructs) from its
    logical axis names ``axes`` (the same tree of name tuples: ``pythia.logical_axes(params)``)."""

    def one(path: tuple, leaf: Any, names: tuple[str, ...]) -> NamedSharding:
        spec = logical_to_spec(names)
        for dim, (size, axis) in enumerate(zip(leaf.shape, spec)):
            if axis is not None and size % mesh.shape[axis]:
                raise UserError(
                    f"parameter {tree_io.path_name(path)} dimension {dim} ('{names[dim]}', size {size}) "
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


def abstract_batch(mesh: Mesh, batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The train step's batch as sharded shapes: ``tokens [B, T + 1]`` and ``domain [B]``
    (int32, rows over the batch axes), for compiling the step before any data is read."""
    rows = batch_sharding(mesh)
    return {"tokens": jax.ShapeDtypeStruct((batch_size, seq_len + 1), np.int32, sharding=rows),
            "domain": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=rows)}


def check_batch(mesh: Mesh, batch_size: int, micro_batches: int) -> None:
    """Each micro-batch (``B / M`` rows) must split evenly over ``data * fsdp`` devices.

    Nothing else is required of the processes: each one loads the rows its devices hold
    (:func:`process_rows`), whichever mesh axes span processes."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % micro_batches or (batch_size // micro_batches) % n:
        raise UserError(
            f"train.batch_size {batch_size} / train.micro_batches {micro_batches} must be a "
            f"multiple of mesh data x fsdp = {n}"
        )


def process_rows(mesh: Mesh, batch_rows: int, process_index: int | None = None) -> np.ndarray:
    """Sorted global row indices of a ``batch_rows``-row batch that the devices of process
    ``process_index`` (default: this one) hold under :func:`batch_sharding`. Rows replicated
    over ``tensor`` devices, or over several of the process's devices, appear once."""
    p = jax.process_index() if process_index is None else process_index
    index = batch_sharding(mesh).devices_indices_map((batch_rows,))
    rows = [np.arange(batch_rows)[idx[0]] for d, idx in index.items() if d.process_index == p]
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


def global_batch(
    local: dict[str, np.ndarray], mesh: Mesh, global_rows: int, rows: np.ndarray | None = None
) -> dict[str, jax.Array]:
    """This process's rows of the global batch -> global ``jax.Array``s sharded over the batch axes.

    ``local`` holds global rows ``rows`` (sorted; default :func:`process_rows`) in that order;
    each device gets its shard from them, so any mesh works, including one whose ``tensor``
    axis spans processes (every process then holds every row)."""
    sharding = batch_sharding(mesh)
    rows = process_rows(mesh, global_rows) if rows is None else np.asarray(rows)
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        if len(v) != len(rows):
            raise UserError(
                f"batch '{k}' has {len(v)} rows on process {jax.process_index()}, whose devices "
                f"hold {len(rows)} of the {global_rows} global rows"
            )
        out[k] = jax.make_array_from_callback(
            (global_rows, *v.shape[1:]), sharding, lambda idx, v=v: v[_local_slice(rows, idx[0], global_rows)]
        )
    return out


def _local_slice(rows: np.ndarray, wanted: slice, global_rows: int) -> slice:
    """Positions in ``rows`` of the contiguous global rows ``wanted`` (all must be present)."""
    start, stop, _ = wanted.indices(global_rows)
    lo = int(np.searchsorted(rows, start))
    if stop > start and not (lo + stop - start <= len(rows) and rows[lo + stop - start - 1] == stop - 1):
        raise UserError(f"global rows [{start}, {stop}) are not all loaded by this process")
    return slice(lo, lo + max(0, stop - start))


def put_global(tree: Any, shardings: Any) -> Any:
    """Host (numpy) arrays, identical on every process -> global arrays with ``shardings``."""

    def one(x: Any, s: NamedSharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(one, tree, shardings)


# ---------------------------------------------------------------------------------------
# multi-host

_COORDINATOR_VARS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def detect_cluster(env: dict[str, str] | None = None) -> str | None:
    """Which multi-process environment this is: ``"coordinator"`` (JAX coordinator variables,
    as the local launcher sets), ``"slurm"`` (a task of a multi-task ``srun`` step), ``"tpu"``
    (a Cloud TPU VM: jax finds the other workers itself), or None (a single process)."""
    env = os.environ if env is None else env
    if any(k in env for k in _COORDINATOR_VARS):
        return "coordinator"
    if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env:
        tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
        return "slurm" if tasks.isdigit() and int(tasks) > 1 else None
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if hosts:
        return "tpu" if "," in hosts else None
    return "tpu" if _on_cloud_tpu_vm(env) else None


def _on_cloud_tpu_vm(env: dict[str, str]) -> bool:
    """A Cloud TPU VM: the TPU runtime's variables, jax's own check (TPU PCI devices and
    libtpu), or ``/dev/accel*`` with libtpu installed. A single-host VM then initialises a
    one-process cluster, which is harmless."""
    if "TPU_WORKER_ID" in env or "TPU_ACCELERATOR_TYPE" in env:
        return True
    try:
        from jax._src import cloud_tpu_init

        if cloud_tpu_init.running_in_cloud_tpu_vm:
            return True
    except Exception:  # private API moved: fall back to the device files
        pass
    import glob
    import importlib.util

    return bool(glob.glob("/dev/accel*")) and importlib.util.find_spec("libtpu") is not None


def maybe_initialize_distributed(mesh_cfg: Any) -> bool:
    """``jax.distributed.initialize()`` when ``mesh.distributed`` is ``on``, or ``auto`` and
    :func:`detect_cluster` finds several processes. Returns whether it initialised. Call
    before any other jax use.

    With ``JAX_COORDINATOR_ADDRESS`` (and ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``) those are
    used; otherwise jax detects SLURM and Cloud TPU itself (``JAX_LOCAL_DEVICE_IDS`` picks the
    GPUs a process owns). ``mesh.heartbeat_timeout_s`` bounds how long the others run on after
    one process dies; ``mesh.shutdown_timeout_s`` how long exit waits for the rest.
    """
    mode = mesh_cfg.distributed
    if mode == "off" or (mode == "auto" and detect_cluster() is None):
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
    kwargs.update(_timeouts(mesh_cfg))
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"jax.distributed.initialize failed: {str(err).splitlines()[0]}") from None
    return True


def _timeouts(mesh_cfg: Any) -> dict[str, int]:
    """The configured timeouts, as far as this jax's ``distributed.initialize`` takes them."""
    import inspect

    wanted = {"initialization_timeout": mesh_cfg.init_timeout_s,
              "heartbeat_timeout_seconds": mesh_cfg.heartbeat_timeout_s,
              "shutdown_timeout_seconds": mesh_cfg.shutdown_timeout_s}
    known = inspect.signature(jax.distributed.initialize).parameters
    return {k: int(v) for k, v in wanted.items() if k in known}


def _already_initialized() -> bool:
    try:
        from jax._src import distributed

        return distributed.global_state.client is not None
    except Exception:  # private API moved: assume not initialised
        return False
