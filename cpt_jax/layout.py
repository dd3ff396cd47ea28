"""Activations laid out on the mesh by logical axis, and the step traced under its mesh.

Activations follow :data:`ACTIVATION_RULES` through :func:`constrain`: rows over
``("data", "fsdp")``, heads / MLP features / vocabulary over ``tensor``, the model width
replicated; each scanned layer's weights keep their fsdp layout (:func:`constrain_params`).
Without these constraints the partitioner is free to lay the residual stream out along fsdp's
weight dimension, which under fsdp costs several times one device's memory. The constraints
read the mesh that ``jax.set_mesh`` sets (:class:`OnMesh` does for the train step); outside one
they do nothing, so single-device code, eval and tests are unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import Mesh, PartitionSpec as P

from cpt_jax.sharding import BATCH_AXES, logical_to_spec

# logical axis name of an activation dimension -> mesh axes (None = replicated)
ACTIVATION_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "length": None,
    "embed": None,
    "heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "vocab": "tensor",
}


def context_mesh() -> Any:
    """The abstract mesh that the enclosing ``jax.set_mesh`` sets (empty outside one)."""
    return jax.sharding.get_abstract_mesh()


def context_platform() -> str:
    """The platform of the devices being compiled for: the context mesh's devices (a TPU slice
    compiled ahead of time on a CPU host is ``tpu``), else the default backend's."""
    device = getattr(context_mesh(), "abstract_device", None)
    return getattr(device, "platform", None) or jax.default_backend()


def activation_spec(shape: tuple[int, ...], names: tuple[str, ...], mesh: Any) -> P:
    """PartitionSpec of an activation under :data:`ACTIVATION_RULES`; a dimension that does not
    divide by its mesh axes stays replicated (a constraint is a layout, never an error)."""
    spec = []
    for size, name in zip(shape, names):
        axes = ACTIVATION_RULES[name]
        group = (axes,) if isinstance(axes, str) else tuple(axes or ())
        group = tuple(a for a in group if a in mesh.axis_names)
        ways = math.prod(mesh.shape[a] for a in group)
        spec.append(None if not group or ways == 1 or size % ways else (group if len(group) > 1 else group[0]))
    return P(*spec)


def constrain(x: jax.Array, *names: str) -> jax.Array:
    """``x`` laid out by the logical names of its dimensions (``"batch"``, ``"length"``,
    ``"embed"``, ``"heads"``, ``"mlp"``, ``"vocab"``, ...) on the mesh that the enclosing
    ``jax.set_mesh`` sets; unchanged outside one (single-device code, eval, tests)."""
    mesh = context_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, activation_spec(x.shape, names, mesh))


def constrain_params(tree: Any, axes: Any) -> Any:
    """Parameters (or one scanned layer's slice of them) laid out by :data:`RULES` on the
    context mesh, ``axes`` holding each leaf's logical names. Inside the layer scan this keeps
    each layer's weight gradient sharded, so fsdp reduce-scatters it instead of all-reducing
    a full-size copy; unchanged outside a mesh."""
    mesh = context_mesh()
    if mesh.empty:
        return tree
    is_names = lambda x: isinstance(x, tuple) and all(isinstance(n, str) for n in x)  # noqa: E731
    specs = jax.tree.map(logical_to_spec, axes, is_leaf=is_names)
    return jax.lax.with_sharding_constraint(tree, specs)


class OnMesh:
    """A jitted function that is traced, lowered and run under ``jax.set_mesh(mesh)``, so the
    model's :func:`constrain` calls and per-shard kernels see the mesh (``jax.jit`` keys its
    cache on the context mesh, so every call finds the same executable)."""

    def __init__(self, jitted: Any, mesh: Mesh):
        self.jitted, self.mesh = jitted, mesh
        self.executable: Any = None

    def __call__(self, *args: Any) -> Any:
        if self.executable is not None:
            return self.executable(*args)
        with jax.set_mesh(self.mesh):
            return self.jitted(*args)

    def lower(self, *args: Any) -> Any:
        """``jax.jit(...).lower`` under the mesh; ``.compile()`` of it runs on its own."""
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args)

    def compile(self, *args: Any) -> Any:
        """Compile for ``args`` (arrays or sharded ``ShapeDtypeStruct``s) ahead of the first
        call, which then runs that executable; returns it (``memory_analysis()`` etc.)."""
        self.executable = self.lower(*args).compile()
        return self.executable
