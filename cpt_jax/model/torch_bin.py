"""Read PyTorch ``.bin`` state dicts (``torch.save`` zip format) without importing torch.

A ``torch.save`` file is a zip archive ``<name>/data.pkl`` + ``<name>/data/<key>`` (one raw
little-endian buffer per storage) + ``<name>/byteorder``. The pickle rebuilds each tensor with
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``, where ``storage`` is a
persistent id ``("storage", torch.<Type>Storage, key, location, numel)``. A restricted unpickler
accepts only those globals (and ``collections.OrderedDict``) and turns each tensor into a lazy
``TensorRef`` that reads its bytes as a numpy array on demand; anything else in the pickle is
refused, so a ``.bin`` cannot run code.

Nothing in the pickle is trusted for memory: every tensor's extent
``offset + sum((size_i - 1) * stride_i)`` must lie inside its storage (no negative values),
its element count may not exceed the storage's, each storage's zip member must hold at least
its bytes, and a compressed member may not inflate beyond ``MAX_INFLATE`` times its stored size
(``torch.save`` stores members uncompressed). Any violation is a one-line ``UserError``.
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from cpt_jax.errors import UserError

MAX_INFLATE = 20  # a compressed zip member may inflate at most this many times (plus 1 MiB)

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

_TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype("<f8"), "float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16), "int64": np.dtype("<i8"), "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"), "int8": np.dtype("i1"), "uint8": np.dtype("u1"), "bool": np.dtype("?"),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass
class TensorRef:
    """A tensor in a ``.bin`` file: shape and dtype now, values on ``read()``."""

    archive: zipfile.ZipFile
    member: str
    big_endian: bool
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    def read(self) -> np.ndarray:
        """The tensor as a C-contiguous numpy array (little-endian, the storage dtype)."""
        raw = self.archive.read(self.member)
        swap = self.big_endian and self.dtype.itemsize > 1
        flat = np.frombuffer(raw, dtype=self.dtype.newbyteorder(">") if swap else self.dtype)
        if flat.size < self.storage.numel:
            raise UserError(f"{self.archive.filename}: storage {self.storage.key} is truncated")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.shape, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.ascontiguousarray(view).astype(self.dtype, copy=False)


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> dict:
    return {"storage": storage, "offset": int(offset), "shape": tuple(size), "stride": tuple(stride)}


def _rebuild_tensor_v3(storage: _Storage, offset: int, size: tuple, stride: tuple,
                       requires_grad: Any, hooks: Any, dtype: np.dtype, *_: Any) -> dict:
    storage = dataclasses.replace(storage, dtype=dtype)
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: dict, *_: Any) -> dict:
    return data


class _Unpickler(pickle.Unpickler):
    """Allows only what a state dict of tensors needs; everything else is refused."""

    def __init__(self, file: Any, name: str):
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_tensor_v3":
            return _rebuild_tensor_v3
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        raise UserError(f"{self.name}: refusing to unpickle {module}.{name} (not a plain tensor state dict)")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UserError(f"{self.name}: unsupported persistent id {pid!r:.60}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise UserError(f"{self.name}: unsupported storage type {stype!r:.60}")
        return _Storage(str(key), stype.dtype, int(numel))


def read_state_dict(path: str | Path) -> dict[str, TensorRef]:
    """Name -> lazy ``TensorRef`` for every tensor of a ``torch.save`` zip file."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} is not a torch.save zip archive (legacy or corrupt .bin): {err}") from None
    pkl = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
        raise UserError(f"{path} has no data.pkl (not a torch.save archive)")
    prefix = pkl[0][: -len("data.pkl")]
    names = set(archive.namelist())
    order = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
    try:
        with archive.open(pkl[0]) as f:
            obj = _Unpickler(f, str(path)).load()
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot unpickle {path}: {type(err).__name__}: {err}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a state dict")
    out: dict[str, TensorRef] = {}
    for name, t in obj.items():
        if not (isinstance(t, dict) and "storage" in t):
            continue  # non-tensor entries (e.g. metadata) are ignored
        member = f"{prefix}data/{t['storage'].key}"
        if member not in names:
            raise UserError(f"{path}: storage {member} of tensor {name} is missing")
        _check_member(path, archive.getinfo(member), t["storage"])
        _check_extent(path, name, t)
        out[name] = TensorRef(archive, member, order == "big", t["storage"], t["offset"], t["shape"], t["stride"])
    return out


def _check_member(path: Path, info: zipfile.ZipInfo, storage: _Storage) -> None:
    """The zip member holds at least the storage's bytes and is not a decompression bomb."""
    need = storage.numel * storage.dtype.itemsize
    if storage.numel < 0 or info.file_size < need:
        raise UserError(f"{path}: storage {storage.key} holds {info.file_size} bytes, "
                        f"its {storage.numel} elements need {need}")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_INFLATE * info.compress_size + (1 << 20):
        raise UserError(f"{path}: zip member {info.filename} inflates {info.compress_size} bytes to "
                        f"{info.file_size} (refused: out of proportion)")


def _check_extent(path: Path, name: str, t: dict) -> None:
    """Offset, shape and stride are non-negative ints and the tensor lies inside its storage."""
    shape, stride, offset, numel = t["shape"], t["stride"], t["offset"], t["storage"].numel
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (*shape, *stride, offset))
    if not ints or len(shape) != len(stride) or min((*shape, *stride, offset), default=0) < 0:
        raise UserError(f"{path}: tensor {name} has an invalid offset {offset!r}, shape {shape!r} "
                        f"or stride {stride!r}")
    count = 1
    for n in shape:
        count *= n  # Python ints: no overflow
    if count == 0:
        return
    last = offset + sum((n - 1) * st for n, st in zip(shape, stride))
    if last >= numel or count > numel:
        raise UserError(f"{path}: tensor {name} (offset {offset}, shape {tuple(shape)}, stride "
                        f"{tuple(stride)}) reaches beyond its storage of {numel} elements")
