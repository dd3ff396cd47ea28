"""bench/memory_estimate.py's Cloud TPU plan against a hand computation."""

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import memory_estimate as me  # noqa: E402
import ours  # noqa: E402

GIB = 1024 ** 3


def _hand_410m_per_chip(rows: int, seq: int, fsdp: int, tensor: int, chunk: int) -> float:
    """Pythia-410M, bf16 compute, remat full, splash attention, worked out by hand."""
    V, d, L, F = 50304, 1024, 24, 4096
    per_layer = (2 * 2 * d  # ln1, ln2 scale + bias
                 + d * 3 * d + 3 * d + d * d + d  # qkv, out (+ biases)
                 + d * F + F + F * d + d)  # fc1, fc2 (+ biases)
    n = 2 * V * d + L * per_layer + 2 * d  # embed_in, embed_out, layers, final_ln
    assert n == 405_334_016  # Pythia-410M's parameter count
    shards = fsdp * tensor
    state = 16 * n / shards  # fp32 params 4N + AdamW mu, nu 8N + fp32 grads 4N
    weights = 2 * n / shards + 2 * 2 * 12 * d * d / tensor  # bf16 copy + two gathered layers
    tokens = rows * seq
    saved = L * tokens * 1 * d * 2  # remat full: the residual stream per layer
    work = tokens * 40 * d * 2 * (1 + 39 / tensor) / 40
    logits = rows * chunk * V * (4 + 4 + 2) / tensor
    return state + weights + saved + work + logits  # splash: no [T, T] scores


@pytest.mark.parametrize("fsdp,tensor", [(4, 1), (2, 2)])
def test_per_chip_matches_hand_computation_410m(fsdp, tensor):
    c = ours.model_config("410m", compute_dtype="bfloat16", remat="full")
    got = me.per_chip(c, rows=8, seq=2048, fsdp=fsdp, tensor=tensor, vocab_chunk=512)
    want = _hand_410m_per_chip(8, 2048, fsdp, tensor, 512)
    # the optimizer state also holds AdamW's step counter: a few bytes
    assert got["total"] == pytest.approx(want, rel=1e-6)
    assert got["attention_scores"] == 0.0


def test_plan_is_the_smallest_slice_that_fits():
    """1.4B on v5e: the plan fits 90% of 16 GiB, and no smaller slice fits with any mesh/remat."""
    c = ours.model_config("1.4b", compute_dtype="bfloat16")
    plan = me.tpu_plan(c, "v5e", seq=2048, rows=4)
    assert plan is not None and plan["bytes"]["total"] <= 0.9 * 16 * GIB
    smaller = [n for n in me.TPU_SLICES["v5e"] if n < plan["chips"]]
    for chips in smaller:
        for remat in me.REMAT_ORDER:
            for tensor in me.TENSOR_SIZES:
                if chips % tensor:
                    continue
                e = me.per_chip(dataclasses.replace(c, remat=remat), 4, 2048, chips // tensor, tensor)
                assert e["total"] > 0.9 * 16 * GIB
    assert plan["slice"] == me.slice_name("v5e", plan["chips"])
    assert me.slice_name("v4", 4) == "v4-8" and me.slice_name("v5p", 4) == "v5p-8"
    assert me.slice_name("v5e", 8) == "v5litepod-8"


def test_configs_fit_their_slices():
    """The shipped TPU configs' layouts (32 x 2048 per step over all chips) fit v4-8 and v5e-8."""
    for preset, remat in (("410m", "dots"), ("1.4b", "full")):
        c = ours.model_config(preset, compute_dtype="bfloat16", remat=remat)
        for gen, chips in (("v4", 4), ("v5e", 8)):
            e = me.per_chip(c, 32 // chips, 2048, chips, 1)
            assert e["total"] <= me.USABLE * me.TPU_HBM_GIB[gen] * GIB, (preset, gen)
