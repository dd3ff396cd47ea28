"""Accelerator slices by the names users type (``v5e-8``, ``2xv5e-256``, ``8xh100``), their
chips' published figures, and their devices for compiling on a host that has none of them.

TPU devices come from libtpu (``jax.experimental.topologies.get_topology_desc``); GPU devices
from the CUDA plugin given a ``GpuTargetConfigProto`` written from the vendor's figures. Nothing
runs on them: a program is lowered and compiled for them, which is enough for the compiler's
memory plan (per chip, exact) and its choice of kernels and collectives.

Chip figures (dense bf16 peak, HBM per chip, HBM bandwidth):

- TPU v4, v5e, v5p, v6e: Google Cloud's "TPU versions" system-architecture tables
  (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e). v4 and v5p slices are named by
  TensorCores (two per chip: ``v4-8`` is 4 chips); v5e and v6e by chips.
- NVIDIA H100 SXM5 80 GB and H200 SXM 141 GB: NVIDIA's H100 / H200 Tensor Core GPU datasheets
  (989 TFLOP/s dense bf16; 3.35 and 4.8 TB/s); A100 SXM4 80 GB: NVIDIA's A100 datasheet
  (312 TFLOP/s, 2.039 TB/s). SM counts, shared memory and L2 sizes: NVIDIA's CUDA C++
  Programming Guide (compute capability tables) and the Hopper / Ampere tuning guides. Memory
  sizes are what the driver reports (H100 80 GB: 81,559 MiB).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from typing import Any

from cpt_jax.errors import UserError

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator: ``hbm_bytes`` of memory, ``peak_flops`` dense bf16 FLOP/s and
    ``hbm_bandwidth`` bytes/s."""

    name: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float


CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, 1.2e12),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 819e9),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2.765e12),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, 1.64e12),
    "h100": Chip("NVIDIA H100 80GB HBM3", 81559 << 20, 989e12, 3.35e12),
    "h200": Chip("NVIDIA H200", 143771 << 20, 989e12, 4.8e12),
    "a100-80gb": Chip("NVIDIA A100-SXM4-80GB", 81920 << 20, 312e12, 2.039e12),
}

# GpuTargetConfigProto fields per GPU: (SMs, FP32 lanes per SM, shared memory per SM, opt-in
# shared memory per block, L2 bytes, boost clock GHz, compute capability)
_GPU_TARGETS: dict[str, tuple[int, int, int, int, int, float, tuple[int, int]]] = {
    "h100": (132, 128, 233472, 232448, 50 << 20, 1.98, (9, 0)),
    "h200": (132, 128, 233472, 232448, 50 << 20, 1.98, (9, 0)),
    "a100-80gb": (108, 64, 167936, 166912, 40 << 20, 1.41, (8, 0)),
}

_TPU_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}
_MEGACORE = ("v4", "v5p")  # slice names count TensorCores, two per chip
_TOPOLOGY_PREFIX = {"v4": "v4", "v5e": "v5e", "v5p": "v5", "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A named slice: ``slices`` x ``hosts`` x ``chips_per_host`` chips of one kind."""

    name: str
    platform: str  # "tpu" | "gpu"
    family: str  # key of CHIPS: v4, v5e, v5p, v6e, h100, h200, a100-80gb
    chips: int  # in all slices (TPU) or hosts (GPU) together
    slices: int = 1
    shape: tuple[int, ...] = ()  # TPU chip grid of one slice
    chip_config: str = "default"
    host_bounds: tuple[int, int, int] = (1, 1, 1)
    wrap: tuple[bool, bool, bool] = (False, False, False)
    hosts: int = 1  # GPU hosts

    @property
    def chip(self) -> Chip:
        return CHIPS[self.family]

    def devices(self) -> list[Any]:
        """The slice's devices for ahead-of-time compilation (no accelerator needed)."""
        from jax.experimental import topologies

        try:
            if self.platform == "tpu":
                _libtpu_without_tpu(self)
                desc = topologies.get_topology_desc(
                    platform="tpu", topology_name=f"{_TOPOLOGY_PREFIX[self.family]}:"
                    + "x".join(map(str, self.shape)), chip_config_name=self.chip_config,
                    chips_per_host_bounds=self.host_bounds, num_slices=self.slices, wrap=self.wrap)
            else:
                desc = topologies.get_topology_desc(
                    platform="cuda", topology_name="", target_config=gpu_target_config(self.family),
                    topology=f"1x{self.hosts}x{self.chips // self.hosts}")
        except Exception as err:  # noqa: BLE001 - a plugin that failed to load or refused the shape
            raise UserError(f"topology {self.name}: the {self.platform.upper()} compiler could not "
                            f"describe it ({str(err).splitlines()[0][:200]})") from None
        return list(desc.devices)


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    """The chip grid of a TPU slice of ``chips`` (a power of two) chips: from one chip, or from
    the 2x2 host block, double the smallest side (the last of equals), as Cloud TPU's slice
    shapes grow (v5e-8 is 2x4, v4-32 is 2x2x4, v5e-256 is 16x16)."""
    shape = ([2, 2, 1] if chips >= 4 else [1, 1, 1])[:dims]
    while math.prod(shape) < chips:
        i = max(j for j, s in enumerate(shape) if s == min(shape))
        shape[i] *= 2
    return tuple(shape)


def _tpu(name: str, family: str, count: int, slices: int) -> Topology:
    family = _TPU_ALIASES.get(family, family)
    if family not in _TOPOLOGY_PREFIX:
        raise UserError(f"topology {name}: unknown TPU generation '{family}' (v4, v5e, v5p, v6e)")
    chips = count // 2 if family in _MEGACORE else count
    if count <= 0 or (family in _MEGACORE and (count < 8 or count % 8)) or chips & (chips - 1):
        unit = "TensorCores, a multiple of 8" if family in _MEGACORE else "chips, a power of two"
        raise UserError(f"topology {name}: {family} slices are named by {unit}; got {count}")
    dims = 3 if family in _MEGACORE else 2
    shape = _grid(chips, dims)
    bounds = (2, 2, 1) if chips >= 4 else (1, 1, 1)
    if dims == 2 and chips == 8:
        bounds = (2, 4, 1)  # v5e-8 / v6e-8: one host with 8 chips
    torus = all(s >= 4 for s in shape) if dims == 3 else False
    wrap = tuple(torus or (dims == 2 and s >= 16) for s in (*shape, 1)[:3])
    return Topology(name, "tpu", family, chips * slices, slices, shape,
                    "megacore" if family in _MEGACORE else "default", bounds, wrap)


def parse(name: str) -> Topology:
    """A :class:`Topology` from a user's name: ``v4-8`` ... ``v4-4096``, ``v5e-1`` ...
    ``v5e-256`` (``v5litepod-N``), ``v5p-8`` ..., ``v6e-1`` ..., ``2xv5e-256`` (slices);
    ``8xh100``, ``8xh200``, ``8xa100-80gb``, ``1xh100``, ``2x8xh100`` (hosts x GPUs)."""
    text = name.strip().lower()
    m = re.fullmatch(r"(?:(\d+)x)?(v\d[a-z]*)-(\d+)", text)
    if m:
        return _tpu(name, m.group(2), int(m.group(3)), int(m.group(1) or 1))
    m = re.fullmatch(r"(?:(\d+)x)?(\d+)x([a-z]\d+[a-z0-9-]*)", text)
    if m:
        hosts, per_host, gpu = int(m.group(1) or 1), int(m.group(2)), m.group(3)
        gpu = {"a100": "a100-80gb"}.get(gpu, gpu)
        if gpu not in _GPU_TARGETS:
            raise UserError(f"topology {name}: unknown GPU '{gpu}' ({', '.join(_GPU_TARGETS)})")
        if not (0 < per_host <= 8 and hosts > 0):
            raise UserError(f"topology {name}: a host has 1 to 8 GPUs, got {per_host}")
        return Topology(name, "gpu", gpu, hosts * per_host, hosts=hosts)
    raise UserError(f"topology {name!r} is not a slice name such as v5e-8, v4-8, v5p-8, v6e-8, "
                    "2xv5e-256, 8xh100, 8xh200, 8xa100-80gb or 2x8xh100")


def gpu_target_config(gpu: str) -> str:
    """The ``GpuTargetConfigProto`` text of ``gpu`` (see the module docstring for sources)."""
    sms, fpus, smem_core, smem_optin, l2, clock, (major, minor) = _GPU_TARGETS[gpu]
    chip = CHIPS[gpu]
    info = (f"threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152 "
            f"shared_memory_per_core: {smem_core} threads_per_core_limit: 2048 core_count: {sms} "
            f"fpus_per_core: {fpus} "
            f"block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535 "
            f"memory_bandwidth: {int(chip.hbm_bandwidth)} l2_cache_size: {l2} "
            f"clock_rate_ghz: {clock} device_memory_size: {chip.hbm_bytes} "
            f"shared_memory_per_block_optin: {smem_optin} "
            f"cuda_compute_capability {{ major: {major} minor: {minor} }} "
            f"registers_per_core_limit: 65536 registers_per_block_limit: 65536")
    return (f'gpu_device_info {{ {info} }} platform_name: "CUDA" '
            f'dnn_version_info {{ major: 9 minor: 8 }} device_description_str: "{chip.name}"')


def missing_compiler(t: Topology) -> str | None:
    """One line on how to install the compiler for ``t`` when this environment lacks it."""
    import jax

    version = jax.__version__
    if t.platform == "tpu" and importlib.util.find_spec("libtpu") is None:
        return (f"compiling for {t.name} needs the TPU compiler (libtpu, no TPU needed): "
                f"pip install 'jax[tpu]=={version}'")
    if t.platform == "gpu" and (importlib.util.find_spec("jax_plugins.xla_cuda12") is None
                                or importlib.util.find_spec("nvidia.cudnn") is None):
        from cpt_jax.aot import CUDA_COMPILER_DIR

        return (f"compiling for {t.name} needs the CUDA compiler plugin and cuDNN (no GPU needed; kept "
                f"apart so other jax processes do not load them): pip install --no-deps --target "
                f"{CUDA_COMPILER_DIR} 'jax-cuda12-plugin=={version}' 'jax-cuda12-pjrt=={version}' "
                f"'nvidia-cudnn-cu12>=9.8,<10'")
    return None


def _libtpu_without_tpu(t: Topology) -> None:
    """libtpu on a host without TPUs: let a second process load it (libtpu otherwise holds a
    host-wide lock, and a compile beside a test or another compile fails), and skip its lookup
    of the cloud metadata server. The variables libtpu would warn about (accelerator type,
    worker names) stay unset: setting them here would make this process look like a Cloud TPU
    VM to ``sharding.detect_cluster``."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
