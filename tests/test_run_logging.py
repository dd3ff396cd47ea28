"""What a run tells its user: the banner, progress lines with lr, eval lines, TensorBoard tags
(grouped, each once, the config as text) and Weights & Biases (offline)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from cpt_jax.model import pythia
from cpt_jax.train import loop
from cpt_jax.train.metrics import Window, tagged
from train_worker import load_cfg


def _events(folder: Path) -> list:
    """Every event in a TensorBoard folder (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    out = []
    for f in sorted(folder.rglob("events.out.tfevents.*")):
        raw = f.read_bytes()
        i = 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i:i + 8])
            out.append(event_pb2.Event.FromString(raw[i + 12:i + 12 + n]))
            i += 12 + n + 4
    return out


def _leveldb_records(raw: bytes) -> list[bytes]:
    """The records of W&B's transaction log: a 7-byte ``:W&B`` header, then 32 KiB blocks of
    records with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    block, out, part, i = 32768, [], b"", 7
    while i + 7 <= len(raw):
        left = block - (i % block)
        if left < 7:
            i += left
            continue
        n, kind = struct.unpack("<HB", raw[i + 4:i + 7])
        data = raw[i + 7:i + 7 + n]
        i += 7 + n
        if kind == 0 and n == 0:
            break
        part = data if kind in (1, 2) else part + data
        if kind in (1, 4):
            out.append(part)
    return out


def _wandb_records(run_dir: Path) -> tuple[dict, list[dict]]:
    """(config, history rows) of the offline W&B run under ``run_dir/wandb``."""
    from wandb.proto import wandb_internal_pb2

    [path] = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    config, rows = {}, []
    for data in _leveldb_records(path.read_bytes()):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind in ("config", "run"):
            items = rec.config.update if kind == "config" else rec.run.config.update
            config.update({i.key: json.loads(i.value_json) for i in items})
    return config, rows


def test_banner_progress_eval_lines_tensorboard_and_wandb(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    cfg = load_cfg(str(run), ["train.steps=10", "train.log_every=5", "train.eval_every=5",
                              "train.eval_batches=1", "train.progress=true", "schedule.warmup_steps=2",
                              "logging.tensorboard=true", "logging.wandb_project=cpt-jax-test"])
    loop.run(cfg)
    err = capsys.readouterr().err
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    n = pythia.count_params(pythia.PythiaConfig.from_config(cfg.model))

    # banner: before the first progress line, with the independent parameter count
    head = err[:err.index("step 5/10")]
    for line in (f"run       {run}", "devices   1 x cpu", f"{n:,} parameters",
                 "data      synthetic tokens:", "schedule  cosine, 10 steps: lr 0 -> 0.001 over 2 warmup steps -> ",
                 "batch     8 x 32 tokens = 256 tokens per step, 2,560 tokens in all"):
        assert line in head, line
    # progress lines carry the lr logged for that step; eval lines the per-domain losses
    for rec in records:
        if "train/loss" in rec:
            assert f"step {rec['step']}/10" in err and f"lr {rec['lr']:.2e}" in err
        if "eval/avg/loss" in rec:
            domains = [k.split("/")[1] for k in rec if k.startswith("eval/") and k.count("/") == 2
                       and k.endswith("/loss") and k.split("/")[1] not in ("avg", "worst")]
            assert (f"eval step {rec['step']} | " + " | ".join(
                f"{d} {rec[f'eval/{d}/loss']:.4f}" for d in domains)) in err

    # TensorBoard: grouped tags, each (tag, step) once, the config once as text
    scalars = [(v.tag, e.step) for e in _events(run / "tensorboard") for v in e.summary.value
               if v.HasField("simple_value")]
    texts = [v.tag for e in _events(run / "tensorboard") for v in e.summary.value
             if v.metadata.plugin_data.plugin_name == "text"]
    assert len(scalars) == len(set(scalars)) and all("/" in t for t, _ in scalars)
    tags = {t for t, _ in scalars}
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "eval/avg/loss"} <= tags
    assert "loss" not in tags and "lr" not in tags and len(texts) == 1
    expected = {(t, r["step"]) for r in records for t in tagged(r)}
    assert set(scalars) == expected

    # W&B offline: the config once, every tagged value at its step
    config, rows = _wandb_records(run)
    assert config["train"]["steps"] == 10 if isinstance(config.get("train"), dict) else \
        json.loads(json.dumps(config))["train"]["value"]["steps"] == 10
    logged = {(k, r["_step"]): v for r in rows for k, v in r.items() if not k.startswith("_")}
    for rec in records:
        for k, v in tagged(rec).items():
            assert logged[(k, rec["step"])] == pytest.approx(v), k


def test_first_rate_leaves_out_compiling():
    w = Window()
    time.sleep(0.3)  # the first step compiles
    w.add({"loss": 1.0, "grad_norm": 1.0, "lr": 0.1})
    time.sleep(0.05)
    w.add({"loss": 1.0, "grad_norm": 1.0, "lr": 0.1})
    elapsed = time.perf_counter() - w.t0
    rec = w.record(2, [], 2, elapsed, 1.0, None, 1000)
    assert elapsed < 0.3 and rec["tokens_per_s"] == pytest.approx(1000 / elapsed)
    w.reset(time.perf_counter())  # later windows count every step
    w.add({"loss": 1.0, "grad_norm": 1.0, "lr": 0.1})
    assert w.record(3, [], 3, 0.5, 1.0, None, 1000)["tokens_per_s"] == pytest.approx(2000)


def _state_and_batch_bytes(cfg) -> int:
    """Bytes of the train state (fp32 params, AdamW mu and nu, counters) and one batch, from
    the model's shapes: what the compiled step takes as arguments on one device."""
    import numpy as np

    mcfg = pythia.PythiaConfig.from_config(cfg.model)
    n = pythia.count_params(mcfg)
    state = 3 * 4 * n + 4 + 2 * 4  # params, mu, nu; step; two AdamW/schedule counts
    batch = 4 * cfg.train.batch_size * (cfg.train.seq_len + 1) + 4 * cfg.train.batch_size
    return int(np.int64(state + batch))


def test_banner_prints_the_compiled_step_memory(tmp_path, capsys):
    cfg = load_cfg(str(tmp_path / "run"), ["train.steps=2"])
    loop.run(cfg)
    err = capsys.readouterr().err
    [line] = [ln for ln in err.splitlines() if ln.startswith("memory    ")]
    assert err.index("batch     ") < err.index(line)
    args_gib = float(line.split("arguments ")[1].split(",")[0])
    assert args_gib == pytest.approx(_state_and_batch_bytes(cfg) / (1 << 30), abs=0.006)
    assert line.endswith("(this device reports no memory limit)")  # the CPU has none


def test_a_step_that_cannot_fit_stops_before_it_runs_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    from cpt_jax.errors import UserError
    from cpt_jax.train import banner

    run = tmp_path / "run"
    loop.run(load_cfg(str(run), ["train.steps=2", "checkpoint.every=2"]))
    saved = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    monkeypatch.setattr(banner, "device_memory", lambda: 4096)  # a device of 4 KiB
    with pytest.raises(UserError, match=r"needs .* GiB per device but 0.00 GiB are available: .*--fit batch"):
        loop.run(load_cfg(str(run), ["train.steps=4", "checkpoint.every=2"]))
    assert "does NOT fit" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()} == saved
    assert not (run / "checkpoints" / "4").exists()
