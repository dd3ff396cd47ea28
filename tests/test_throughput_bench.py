"""bench/throughput.py stays runnable on CPU, and its memory estimate counts the state right."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import memory_estimate  # noqa: E402
import ours as ours_lib  # noqa: E402
import throughput  # noqa: E402

# total parameters per Pythia size (the Pythia paper's table)
REFERENCE_N = {"410m": 405_334_016, "1.4b": 1_414_647_808}


def test_state_bytes_match_reference_param_counts():
    for preset, n in REFERENCE_N.items():
        c = ours_lib.model_config(preset, compute_dtype="bfloat16", remat="full")
        e = memory_estimate.analytic(c, batch=8, seq=2048, vocab_chunk=512)
        assert e["n_params"] == n
        assert e["params"] == 4 * n and e["grads"] == 4 * n and e["weights_copy"] == 2 * n
        assert 8 * n <= e["opt_state"] <= 8 * n + 64  # mu, nu fp32 + step counts
        # remat full keeps one bf16 residual stream per layer: L * B * T * d * 2 bytes
        assert e["saved_activations"] == c.num_layers * 8 * 2048 * c.hidden_size * 2
        # one [B, c, V] block: fp32 logits + fp32 dlogits + bf16 cast
        assert e["logits"] == 8 * 512 * c.vocab_size * (4 + 4 + 2)


def test_cpu_smoke_run_writes_results(tmp_path):
    out = tmp_path / "t.json"
    throughput.main(["--presets", "tiny", "--seq", "32", "--batch", "2", "--steps", "2",
                     "--warmup", "1", "--no-peer", "--json", str(out)])
    r = json.loads(out.read_text())["results"]
    assert len(r) == 1 and r[0]["side"] == "ours" and "error" not in r[0]
    assert r[0]["tokens_per_s"] > 0 and r[0]["mfu"] is None  # no CPU peak unless given
    c = ours_lib.model_config("tiny")
    n = ours_lib.n_params(c)
    assert r[0]["flops_per_token"] == 6 * (n - c.vocab_size * c.hidden_size) + 12 * c.num_layers * 32 * c.hidden_size
    # donation: the new state reuses the old state's buffers
    mem = r[0]["compiled_memory"]
    state = ours_lib.tree_bytes(ours_lib.abstract_state(c, memory_estimate._tx(ours_lib.OptSettings())))
    assert mem["alias"] >= 0.99 * state
