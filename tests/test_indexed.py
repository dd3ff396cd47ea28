"""Megatron MMapIndexedDataset: byte-exact reads of files built from the spec, writer checks."""

import struct

import numpy as np
import pytest

from cpt_jax.data.indexed import IndexedDataset, IndexedDatasetWriter, dtype_for_vocab
from cpt_jax.errors import UserError

MAGIC = b"MMIDIDX\x00\x00"


def spec_write(prefix, docs, code=8, fmt="H", version=1, magic=MAGIC, doc_idx=None):
    """Build .idx/.bin byte by byte from Megatron's MMapIndexedDataset layout, independent of the writer."""
    sizes = [len(d) for d in docs]
    pointers, pos = [], 0
    for n in sizes:
        pointers.append(pos)
        pos += n * struct.calcsize(fmt)
    doc_idx = list(range(len(docs) + 1)) if doc_idx is None else doc_idx
    idx = magic + struct.pack("<Q", version) + struct.pack("<B", code)
    idx += struct.pack("<Q", len(docs)) + struct.pack("<Q", len(doc_idx))
    idx += b"".join(struct.pack("<i", n) for n in sizes)
    idx += b"".join(struct.pack("<q", p) for p in pointers)
    idx += b"".join(struct.pack("<q", d) for d in doc_idx)
    with open(f"{prefix}.idx", "wb") as f:
        f.write(idx)
    with open(f"{prefix}.bin", "wb") as f:
        f.write(b"".join(struct.pack(f"<{len(d)}{fmt}", *d) for d in docs))


def spec_read(prefix):
    """Tiny reader straight from the spec, used to check the writer's bytes."""
    raw = open(f"{prefix}.idx", "rb").read()
    assert raw[:9] == MAGIC
    version, code, n_seq, n_doc = struct.unpack_from("<QBQQ", raw, 9)
    off = 9 + 8 + 1 + 8 + 8
    sizes = struct.unpack_from(f"<{n_seq}i", raw, off)
    pointers = struct.unpack_from(f"<{n_seq}q", raw, off + 4 * n_seq)
    doc_idx = struct.unpack_from(f"<{n_doc}q", raw, off + 12 * n_seq)
    assert len(raw) == off + 12 * n_seq + 8 * n_doc
    fmt, width = {8: ("H", 2), 4: ("i", 4)}[code]
    data = open(f"{prefix}.bin", "rb").read()
    docs = [list(struct.unpack_from(f"<{n}{fmt}", data, p)) for n, p in zip(sizes, pointers)]
    assert len(data) == sum(sizes) * width
    return version, code, list(sizes), list(pointers), list(doc_idx), docs


DOCS = [[5, 7, 0], [65535, 1, 2, 3, 0], [], [42, 0]]


def test_reads_spec_bytes_exactly(tmp_path):
    prefix = tmp_path / "d"
    spec_write(prefix, DOCS)
    ds = IndexedDataset(prefix)
    assert len(ds) == 4 and ds.dtype == np.uint16
    assert ds.sizes.tolist() == [3, 5, 0, 2]
    assert ds.doc_idx.tolist() == [0, 1, 2, 3, 4]
    assert ds.num_tokens == 10
    for i, d in enumerate(DOCS):
        assert ds[i].tolist() == d
    assert ds[-1].tolist() == DOCS[-1]
    assert ds.flat_tokens().tolist() == sum(DOCS, [])
    assert isinstance(ds.flat_tokens(), np.memmap)
    ds.verify()
    with pytest.raises(IndexError):
        ds[4]


def test_reads_int32_and_multi_sequence_documents(tmp_path):
    prefix = tmp_path / "d"
    docs = [[70000, 3], [2**31 - 1], [9, 9, 9]]
    spec_write(prefix, docs, code=4, fmt="i", doc_idx=[0, 2, 3])
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.int32 and ds.doc_idx.tolist() == [0, 2, 3]
    assert [ds[i].tolist() for i in range(3)] == docs


@pytest.mark.parametrize("dtype,code", [(np.uint16, 8), (np.int32, 4), (np.uint32, 4)])
def test_writer_bytes_match_spec(tmp_path, dtype, code):
    prefix = tmp_path / "sub" / "w"
    docs = [[1, 2, 3, 0], [0], [65535, 0]]
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(np.array(d))
    assert w.num_tokens == 7 and w.num_documents == 3
    version, got_code, sizes, pointers, doc_idx, got = spec_read(prefix)
    width = 2 if code == 8 else 4
    assert (version, got_code) == (1, code)
    assert sizes == [4, 1, 2] and pointers == [0, 4 * width, 5 * width]
    assert doc_idx == [0, 1, 2, 3] and got == docs
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["w.bin", "w.idx"]


def test_writer_empty_dataset_roundtrips(tmp_path):
    with IndexedDatasetWriter(tmp_path / "e"):
        pass
    ds = IndexedDataset(tmp_path / "e")
    assert len(ds) == 0 and ds.num_tokens == 0 and ds.flat_tokens().size == 0
    assert ds.doc_idx.tolist() == [0]


def test_dtype_for_vocab():
    assert dtype_for_vocab(50277) == np.uint16
    assert dtype_for_vocab(65536) == np.uint16
    assert dtype_for_vocab(65537) == np.int32
    with pytest.raises(UserError):
        dtype_for_vocab(0)


def test_writer_rejects_out_of_range_tokens(tmp_path):
    w = IndexedDatasetWriter(tmp_path / "x", np.uint16)
    with pytest.raises(UserError, match="out of range"):
        w.add_document([1, 65536])
    with pytest.raises(UserError, match="out of range"):
        w.add_document([-1])
    with pytest.raises(UserError, match="integers"):
        w.add_document([1.5])
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="not supported"):
        IndexedDatasetWriter(tmp_path / "y", np.float32)


def test_interrupted_write_leaves_old_pair_or_nothing(tmp_path):
    prefix = tmp_path / "d"
    spec_write(prefix, [[1, 2]])
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(prefix) as w:
            w.add_document([7, 7, 7])
            raise RuntimeError("killed")
    assert IndexedDataset(prefix)[0].tolist() == [1, 2]  # old pair untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "d.idx"]
    fresh = tmp_path / "f"
    w = IndexedDatasetWriter(fresh)
    w.add_document([3])  # never finalized: nothing under the final names
    assert not (tmp_path / "f.idx").exists() and not (tmp_path / "f.bin").exists()
    w.abort()


def corrupt(prefix, offset, data):
    with open(f"{prefix}.idx", "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda p: corrupt(p, 0, b"XXXXXXX"), "bad magic"),
        (lambda p: corrupt(p, 9, struct.pack("<Q", 2)), "version 2"),
        (lambda p: corrupt(p, 17, b"\x09"), "unknown dtype code 9"),
        (lambda p: open(f"{p}.idx", "r+b").truncate(40), "truncated"),
        (lambda p: open(f"{p}.idx", "r+b").truncate(10), "truncated header"),
        (lambda p: open(f"{p}.bin", "r+b").truncate(6), "sizes add up to 10 tokens"),
        (lambda p: open(f"{p}.bin", "ab").write(b"\x00\x00"), "sizes add up"),
        (lambda p: corrupt(p, 34, struct.pack("<i", 4)), "sizes add up"),
        (lambda p: corrupt(p, 34 + 16 + 24, struct.pack("<q", 2)), "pointers"),
        (lambda p: corrupt(p, 34 + 16 + 32 + 32, struct.pack("<q", 9)), "doc_idx"),
        (lambda p: (p.with_suffix(".bin").unlink()), "no such file"),
    ],
)
def test_corrupt_files_raise_user_error(tmp_path, mutate, match):
    prefix = tmp_path / "d"
    spec_write(prefix, DOCS)
    mutate(prefix)
    with pytest.raises(UserError, match=match) as err:
        IndexedDataset(prefix)
    assert str(tmp_path) in str(err.value)


def test_verify_catches_middle_pointer(tmp_path):
    prefix = tmp_path / "d"
    spec_write(prefix, DOCS)
    corrupt(prefix, 34 + 16 + 8, struct.pack("<q", 8))  # pointer[1]: 6 is right
    ds = IndexedDataset(prefix)
    with pytest.raises(UserError, match="pointers"):
        ds.verify()
