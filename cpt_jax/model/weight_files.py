"""Tensor files of a Hugging Face directory: safetensors (single or sharded) and torch ``.bin``.

safetensors layout: 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` padded with
spaces to a multiple of 8, then the raw little-endian data (offsets relative to its start).
Sharded checkpoints carry ``<weights>.index.json`` with a ``weight_map`` name -> shard file.
Reading uses the ``safetensors`` library's numpy API (its header checks, lazy per tensor, no
torch); writing produces files that ``safetensors`` and ``transformers`` read.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from cpt_jax.errors import UserError
from cpt_jax.model import torch_bin

_ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}

# in order of preference
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclasses.dataclass
class SafetensorRef:
    """A tensor in a safetensors file: shape and dtype now, values on ``read()``."""

    path: Path
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(self.path, framework="numpy") as f:
            arr = f.get_tensor(self.name)
        return np.asarray(arr, dtype=self.dtype).reshape(self.shape)


def read_safetensors(path: str | Path) -> dict[str, SafetensorRef]:
    """Name -> lazy ref for every tensor of one ``.safetensors`` file.

    The header is checked by the ``safetensors`` library itself (offsets in order, contiguous,
    non-overlapping, inside the file, each matching its shape and dtype); its numpy reader needs
    no torch (``ml_dtypes``, imported here, gives numpy its ``bfloat16``)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(path, framework="numpy") as f:
            specs = {name: (f.get_slice(name).get_dtype(), f.get_slice(name).get_shape())
                     for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"cannot read safetensors file {path}: {str(err).splitlines()[0]}") from None
    out: dict[str, SafetensorRef] = {}
    for name, (dtype, shape) in specs.items():
        if dtype not in _ST_DTYPES:
            raise UserError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        out[name] = SafetensorRef(path, name, tuple(int(s) for s in shape), _ST_DTYPES[dtype])
    return out


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write numpy arrays (C order, little-endian) as one safetensors file."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    arrays = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _ST_NAMES:
            raise UserError(f"cannot write tensor {name} of dtype {arr.dtype} to safetensors")
        header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())
    tmp.replace(path)


def _read_one(path: Path) -> dict[str, Any]:
    if path.name.endswith(".safetensors"):
        return read_safetensors(path)
    return torch_bin.read_state_dict(path)


def read_weights(directory: str | Path) -> tuple[dict[str, Any], str]:
    """All tensors of a Hugging Face directory as name -> lazy ref, and the file set's name."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read_one(path), name
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"cannot read shard index {path}: {type(err).__name__}: {err}") from None
        refs: dict[str, Any] = {}
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).is_file():
                raise UserError(f"shard {shard} listed in {path} is missing")
            refs.update(_read_one(directory / shard))
        return refs, name
    raise UserError(f"no weights in {directory} (expected one of {', '.join(WEIGHT_FILES)})")
