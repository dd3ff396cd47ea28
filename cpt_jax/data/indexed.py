"""Megatron / GPT-NeoX ``MMapIndexedDataset``: a ``.bin`` token file plus a ``.idx`` index.

Layout of ``PREFIX.idx`` (all little-endian)::

    magic     9 bytes  b"MMIDIDX\\x00\\x00"
    version   uint64   1
    dtype     uint8    code: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16
    n_seq     uint64   number of sequences
    n_doc     uint64   length of doc_idx
    sizes     int32[n_seq]    tokens per sequence
    pointers  int64[n_seq]    byte offset of each sequence in the .bin
    doc_idx   int64[n_doc]    sequence index where each document starts (Megatron: [0, ..., n_seq])

``PREFIX.bin`` holds the sequences' tokens back to back. Pythia's pre-tokenized Pile uses
uint16 (code 8). The code table has no uint32, so a vocabulary above 65,536 ids is written as
int32 (code 4), which Megatron's own reader also understands.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from array import array
from typing import Any

import numpy as np

from cpt_jax.errors import UserError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, n_seq, n_doc
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_OF_DTYPE: dict[np.dtype, int] = {dt: code for code, dt in DTYPE_CODES.items()}
_TOKEN_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int32), np.dtype(np.int64))


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id < vocab_size fits in 16 bits, else int32 (Megatron has no uint32)."""
    if vocab_size <= 0:
        raise UserError(f"vocabulary size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def index_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


def bin_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


class IndexedDataset:
    """Memory-mapped reader: ``len(ds)`` sequences, ``ds[i]`` the tokens of sequence i.

    Nothing is loaded up front beyond the header; ``sizes``, ``pointers`` and ``doc_idx`` are
    views into the mapped ``.idx`` and every sequence is a view into the mapped ``.bin``.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        idx, binf = index_path(prefix), bin_path(prefix)
        for path in (idx, binf):
            if not path.is_file():
                raise UserError(f"{path}: no such file (an indexed dataset needs .idx and .bin)")
        idx_len = idx.stat().st_size
        with open(idx, "rb") as f:
            head = f.read(HEADER.size)
        if len(head) < HEADER.size:
            raise UserError(f"{idx}: truncated header ({len(head)} of {HEADER.size} bytes)")
        magic, version, code, n_seq, n_doc = HEADER.unpack(head)
        if magic != MAGIC:
            raise UserError(f"{idx}: bad magic {magic!r}, not a Megatron MMapIndexedDataset index")
        if version != VERSION:
            raise UserError(f"{idx}: index version {version}, only version {VERSION} is supported")
        if code not in DTYPE_CODES:
            raise UserError(f"{idx}: unknown dtype code {code} (known: {sorted(DTYPE_CODES)})")
        self.dtype: np.dtype = DTYPE_CODES[code]
        want = HEADER.size + 4 * n_seq + 8 * n_seq + 8 * n_doc
        if idx_len != want:
            raise UserError(
                f"{idx}: {idx_len} bytes, but its header ({n_seq} sequences, {n_doc} doc_idx "
                f"entries) needs {want}: truncated or corrupt"
            )
        mm = np.memmap(idx, dtype=np.uint8, mode="r") if idx_len else np.zeros(0, np.uint8)
        off = HEADER.size
        self.sizes: np.ndarray = mm[off : off + 4 * n_seq].view("<i4")
        off += 4 * n_seq
        self.pointers: np.ndarray = mm[off : off + 8 * n_seq].view("<i8")
        off += 8 * n_seq
        self.doc_idx: np.ndarray = mm[off : off + 8 * n_doc].view("<i8")
        self.num_tokens = int(np.sum(self.sizes, dtype=np.int64))
        bin_len = binf.stat().st_size
        item = self.dtype.itemsize
        if n_seq and int(self.sizes.min()) < 0:
            raise UserError(f"{idx}: negative sequence size: corrupt index")
        if self.num_tokens * item != bin_len:
            raise UserError(
                f"{idx}: sizes add up to {self.num_tokens} tokens ({self.num_tokens * item} bytes "
                f"of {self.dtype}) but {binf} has {bin_len} bytes: truncated or mismatched pair"
            )
        if n_seq and (
            int(self.pointers[0]) != 0
            or int(self.pointers[-1]) + int(self.sizes[-1]) * item != bin_len
        ):
            raise UserError(f"{idx}: byte pointers do not match the sizes: corrupt index")
        if n_doc and (int(self.doc_idx[0]) < 0 or int(self.doc_idx[-1]) > n_seq):
            raise UserError(f"{idx}: doc_idx points outside the {n_seq} sequences: corrupt index")
        self._bin_len = bin_len
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        """Tokens of sequence ``i`` (a read-only memmap view, negative ``i`` allowed)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences in {self.prefix}")
        i %= n
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.flat_tokens()[start : start + int(self.sizes[i])]

    def flat_tokens(self) -> np.ndarray:
        """All tokens of the ``.bin`` as one 1-D memmap: documents concatenated in file order."""
        if self._tokens is None:
            if self._bin_len == 0:
                self._tokens = np.zeros(0, self.dtype)
            else:
                self._tokens = np.memmap(bin_path(self.prefix), dtype=self.dtype, mode="r")
        return self._tokens

    def verify(self) -> None:
        """Full O(n) check that every pointer equals the running sum of the sizes before it."""
        item, start = self.dtype.itemsize, 0
        for lo in range(0, len(self), 1 << 22):
            sizes = np.asarray(self.sizes[lo : lo + (1 << 22)], dtype=np.int64)
            want = start + np.concatenate([[0], np.cumsum(sizes)[:-1]]) * item
            if not np.array_equal(want, self.pointers[lo : lo + len(sizes)]):
                raise UserError(f"{index_path(self.prefix)}: byte pointers do not match the sizes")
            start += int(sizes.sum()) * item

    def __repr__(self) -> str:
        return (
            f"IndexedDataset({self.prefix!r}, sequences={len(self)}, "
            f"tokens={self.num_tokens}, dtype={self.dtype})"
        )


class IndexedDatasetWriter:
    """Write ``PREFIX.bin`` / ``PREFIX.idx``; one document = one sequence, as GPT-NeoX does.

    Data goes to temporary names beside the targets; ``finalize()`` first removes any old
    ``.idx``, then renames the ``.bin`` and last the ``.idx`` into place, so an interrupted
    write never leaves a pair that opens as complete. Used as a context manager it finalizes
    on success and deletes the temporary files on error.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: Any = np.uint16):
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype == np.uint32:  # no Megatron code for uint32: store int32 (code 4)
            self.dtype = np.dtype(np.int32)
        if self.dtype not in _TOKEN_DTYPES:
            raise UserError(
                f"token dtype {self.dtype} not supported for writing (use uint16, or int32 "
                "for vocabularies above 65,536 ids)"
            )
        info = np.iinfo(self.dtype)
        self._lo, self._hi = max(0, int(info.min)), int(info.max)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        tag = f".tmp-{os.getpid()}"
        self._bin_tmp = Path(f"{bin_path(prefix)}{tag}")
        self._idx_tmp = Path(f"{index_path(prefix)}{tag}")
        self._bin = open(self._bin_tmp, "wb")
        self._sizes = array("i")  # int32, 4 bytes per document
        self.num_tokens = 0
        self._done = False

    def add_document(self, tokens: Any) -> None:
        """Append one document (a 1-D sequence of non-negative token ids)."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise UserError(f"a document must be a 1-D token array, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise UserError(f"token ids must be integers, got dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < self._lo or int(arr.max()) > self._hi):
            raise UserError(
                f"token id out of range for {self.dtype} (min {int(arr.min())}, max "
                f"{int(arr.max())}; allowed {self._lo}..{self._hi}) writing {self.prefix}"
            )
        if arr.size >= 2**31:
            raise UserError(f"document of {arr.size} tokens exceeds the int32 size field")
        self._bin.write(np.ascontiguousarray(arr, dtype=self.dtype).tobytes())
        self._sizes.append(int(arr.size))
        self.num_tokens += int(arr.size)

    @property
    def num_documents(self) -> int:
        return len(self._sizes)

    def finalize(self) -> None:
        """Write the index and move both files into place (``.idx`` last)."""
        if self._done:
            return
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        n = len(self._sizes)
        sizes = np.frombuffer(self._sizes, dtype=np.int32) if n else np.zeros(0, np.int32)
        pointers = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= self.dtype.itemsize
        doc_idx = np.arange(n + 1, dtype=np.int64)
        with open(self._idx_tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[self.dtype], n, n + 1))
            f.write(sizes.astype("<i4").tobytes())
            f.write(pointers.astype("<i8").tobytes())
            f.write(doc_idx.astype("<i8").tobytes())
            f.flush()
            os.fsync(f.fileno())
        index_path(self.prefix).unlink(missing_ok=True)
        os.replace(self._bin_tmp, bin_path(self.prefix))
        os.replace(self._idx_tmp, index_path(self.prefix))
        self._done = True

    def abort(self) -> None:
        """Close and delete the temporary files; the targets are left as they were."""
        if not self._bin.closed:
            self._bin.close()
        self._bin_tmp.unlink(missing_ok=True)
        self._idx_tmp.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
